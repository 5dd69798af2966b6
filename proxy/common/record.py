"""The record of one turn: what the request log stores and the metrics count, filled in along the turn's
path and handed to the writer (``proxy.usage.logwriter.submit``)."""

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.common.outcome import Outcome

# A benchmarking switch, never a deployment setting: with SLUICE_BENCHMARK_UNGOVERNED=1 the process enforces
# no limits, counts no metrics and writes no request log, so that ``python -m bench`` can measure what they
# cost per turn (its ``-bare`` scenarios). Said loudly at start-up: no one runs a server so by mistake.
UNGOVERNED = os.environ.get("SLUICE_BENCHMARK_UNGOVERNED") == "1"
if UNGOVERNED:
    logging.getLogger("sluice").warning(
        "SLUICE_BENCHMARK_UNGOVERNED=1: no limits, no metrics, no request log (a benchmark only)"
    )


@dataclass(slots=True)
class TurnRecord:
    key_id: int | None
    client_transport: str
    team_id: int | None = None
    endpoint: str = "responses"
    requested_model: str = ""
    upstream_model: str = ""
    provider_id: int | None = None
    status: int = 200
    error_code: str = ""
    upstream_transport: str = ""
    fallback_reason: str = ""
    ws_handshake_ms: float | None = None
    upstream_ws_url: str = ""
    session_id: str = ""
    client_addr: str = ""  # for the allowance of refusals without a key; not stored
    dropped: bool = False  # counted in the metrics, not written (over the anonymous allowance)
    stored: bool = True  # store was not false: the response id may be used from anywhere later
    owner_id: int | None = None  # the key's owner: whose the response is (proxy.governance.ownership)
    claimed: str = ""  # the response id whose owner was recorded (once per turn)
    created_at: float = field(default_factory=time.time)  # a datetime only in the writer thread
    started: float = field(default_factory=time.perf_counter)
    first_event_at: float | None = None
    finished_at: float | None = None
    outcome: Outcome = field(default_factory=Outcome)
    submitted: bool = False  # a turn has one row, whichever exit path submits it first
    trace_id: str = ""  # the turn's trace (proxy.usage.tracing), when traces are exported
    span: Any = None  # the turn's open span, ended by the writer
    attempt_span: Any = None  # the upstream attempt that opened, ended with the turn

    def first_event(self) -> None:
        if self.first_event_at is None:
            self.first_event_at = time.perf_counter()

    @property
    def model(self) -> str:
        """The model the turn counts under (the request log's model column, the dashboard's top models,
        the metrics' label): the one the upstream answered with, else the route's; a turn refused before
        any route was chosen counts under the model it asked for ("" when it named none)."""
        return self.outcome.model or self.upstream_model or self.requested_model
