"""The request-log row of a request the gateway refused before any upstream: logged once, recorded once."""

import logging
from typing import Any

from proxy import logwriter, tracing
from proxy.record import TurnRecord
from proxy.wire import WireError

log = logging.getLogger("sluice.refusals")


def client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def refuse(
    error: WireError,
    *,
    scope: dict[str, Any],
    key_id: int | None,
    client_transport: str,
    endpoint: str,
    requested_model: str = "",
    team_id: int | None = None,
) -> WireError:
    """Record ``error`` as the answer to a request that reached no upstream; returns it for raising."""
    log.info(
        "refused %s %s from %s: %s %s: %s",
        scope.get("method", "WEBSOCKET"),
        scope.get("path", ""),
        client_address(scope) or "?",
        error.status,
        error.code,
        error.message,
    )
    record = TurnRecord(
        key_id=key_id,
        team_id=team_id,
        client_transport=client_transport,
        endpoint=endpoint,
        requested_model=requested_model[:200],
        status=error.status,
        error_code=error.code,
        client_addr=client_address(scope),
    )
    if tracing.ENABLED:
        tracing.start_turn(record, {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
    logwriter.submit(record)
    error.recorded = True  # type: ignore[attr-defined]
    return error
