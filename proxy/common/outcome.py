"""What a turn produced, read from its terminal event (the only event the gateway parses whole)."""

import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sluice.upstream")


@dataclass(slots=True)
class Outcome:
    response_id: str = ""
    model: str = ""
    status: str = ""
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    error_code: str = ""
    output: list[Any] = field(default_factory=list)

    def read_response(self, response: dict[str, Any]) -> None:
        self.response_id = response.get("id") or self.response_id
        self.model = response.get("model") or self.model
        self.status = response.get("status") or self.status
        self.output = response.get("output") or []
        usage = response.get("usage") or {}
        counts = (
            int(usage.get("input_tokens") or 0),
            int(usage.get("output_tokens") or 0),
            int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0),
            int((usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0),
        )
        if min(counts) < 0:
            # The upstream's fault: counted as nothing (never as a refund), the turn's row kept.
            log.warning(
                "upstream reported negative usage for response %s of model %s (%s): counted as 0",
                str(self.response_id)[:200],
                str(self.model)[:200],
                ", ".join(str(c) for c in counts),
            )
        self.input_tokens, self.output_tokens, self.cached_input_tokens, self.reasoning_tokens = (
            max(c, 0) for c in counts
        )
        error = response.get("error") or {}
        if isinstance(error, dict) and error.get("code"):
            self.error_code = str(error["code"])
        elif self.status == "incomplete":
            details = response.get("incomplete_details") or {}
            self.error_code = str(details.get("reason") or "incomplete")

    def read_terminal(self, event_type: str, data: str) -> None:
        try:
            payload = json.loads(data)
        except ValueError:
            self.error_code = "invalid_upstream_event"
            return
        if event_type == "error":
            error = payload.get("error") if isinstance(payload.get("error"), dict) else payload
            self.error_code = str(error.get("code") or error.get("type") or "upstream_error")
            self.status = "error"
            return
        response = payload.get("response")
        if isinstance(response, dict):
            self.read_response(response)


# Terminal error codes that say the request was at fault (the response cannot succeed as asked), and those
# that say a limit refused it; every other failure of a started response is the upstream's (502).
REQUEST_FAULTS = frozenset(
    {"context_length_exceeded", "invalid_prompt", "invalid_image", "invalid_request_error", "bad_request"}
)
LIMITED = frozenset({"rate_limit_exceeded", "insufficient_quota", "usage_limit_reached"})


def terminal_status(kind: str, data: str, outcome: Outcome) -> int:
    """The status a turn records for its terminal event: one rule for SSE and WebSocket, for the request
    log and the metrics (docs/protocol.md). ``outcome`` has read the event already.

    - ``response.completed``, ``response.incomplete``: 200 (an incomplete response exists; its reason is the
      error code);
    - ``error``: the status the event carries (WebSocket error events have one), else by its code;
    - ``response.failed``: by its error code: 429 for a limit, 400 for a request fault, else 502.
    """
    if kind in ("response.completed", "response.incomplete"):
        return 200
    if kind == "error":
        try:
            status = json.loads(data).get("status")
        except (ValueError, AttributeError):
            status = None
        if isinstance(status, int) and 400 <= status <= 599:
            return status
    code = outcome.error_code
    if code in LIMITED:
        return 429
    if code in REQUEST_FAULTS or code.startswith("invalid_"):
        return 400
    return 502


# What ``scan_json_response`` is given instead of a parsed body: one too big to keep, one that is not JSON.
NOT_KEPT = object()
INVALID = object()


def scan_json_response(head: bytes, tail: bytes, value: Any, outcome: Outcome) -> None:
    """Fill ``outcome`` from a non-streamed response body: from its parsed ``value`` when it was small
    enough to keep, else (``NOT_KEPT``) read the id from its head and the usage object from its tail."""
    if value is INVALID:
        outcome.error_code = "invalid_upstream_body"
        return
    if value is not NOT_KEPT:
        try:
            outcome.read_response(value)
        except (ValueError, AttributeError):
            outcome.error_code = "invalid_upstream_body"
        return
    text = head.decode(errors="replace")
    marker = text.find('"id"')
    if marker >= 0:
        try:
            _, rest = text[marker:].split(":", 1)
            outcome.response_id = json.JSONDecoder().raw_decode(rest.lstrip())[0]
        except (ValueError, IndexError):
            pass
    tail_text = tail.decode(errors="replace")
    marker = tail_text.rfind('"usage":')
    if marker >= 0:
        try:
            usage = json.JSONDecoder().raw_decode(tail_text[marker + 8 :].lstrip())[0]
            outcome.read_response({"usage": usage, "id": outcome.response_id})
        except ValueError:
            pass
