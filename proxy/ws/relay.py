"""Relaying one lane's turn to the client: from its upstream socket, from upstream HTTP, or answered
locally (a warm-up); the terminal event's bookkeeping happens before the client sees it."""

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from providers.routing import Route
from proxy.common.deadline import Deadline
from proxy.common.scrubbing import SCRUBBED_EVENTS
from proxy.common.transport import Transport
from proxy.common.wire import TERMINAL_TYPES, WireError, event_type
from proxy.turn.failover import SocketTurn
from proxy.turn.upstream import HttpCall, Relay
from proxy.upstream.http import TransportError
from proxy.upstream.websocket import UpstreamSocket
from proxy.ws.cache import Cached, interrupted_events, refusal
from proxy.ws.protocols import LaneTurn, RelayLane

log = logging.getLogger("sluice.ws")

# Terminal events after which the response can be continued from (an interrupted response is one).
CONTINUABLE = frozenset({"response.completed", "response.incomplete"})


def response_id_of(data: str) -> str:
    """The response id of a ``response.created`` event (parsed once per turn)."""
    try:
        response = json.loads(data).get("response")
    except (ValueError, AttributeError):
        return ""
    return str(response.get("id") or "") if isinstance(response, dict) else ""


async def relay_socket(lane: RelayLane, turn: LaneTurn, opened: SocketTurn) -> None:
    """Relay events from the upstream socket until the terminal one; after the first event there is no
    fallback and no replay. Frames that arrived together are read in one go."""
    record, route, socket = turn.record, opened.route, opened.socket
    record.upstream_transport = Transport.WEBSOCKET.value
    record.upstream_ws_url = socket.url
    record.first_event()
    tagged = socket.lanes

    async def send_many(texts: list[str]) -> None:
        await lane.send_many(texts, tagged)

    idle = route.provider.idle_timeout
    batch = [opened.first, *socket.ready()]  # what arrived with the first event goes out with it
    silence = Deadline(idle)
    try:
        try:
            while True:
                for index, data in enumerate(batch):
                    kind = event_type(data)
                    if kind in SCRUBBED_EVENTS:  # an upstream's diagnostics may hold its key
                        data = batch[index] = turn.core.scrub(data)
                    if kind == "response.created" and not turn.response_id:
                        # Not always the first event: a late answer to an earlier control event
                        # (response.interrupt.failed) may come before it; it is relayed as is.
                        turn.response_id = response_id_of(data)
                        await turn.core.created(turn.response_id)
                    elif kind in TERMINAL_TYPES:
                        if kind == "error" and turn.relayed and refuses_event_type(data):
                            # The upstream does not know a client event the gateway relayed: that
                            # event fails, the response does not.
                            control, frame = turn.relayed.pop(0)
                            if control not in ("response.interrupt", "response.cancel"):
                                batch[index] = refusal(control, frame, "The upstream does not support it.")
                                continue
                            await send_many(batch[:index])
                            await lane.drop_upstream()  # which ends the response upstream
                            return await stop_on_our_own(lane, turn, control)
                        await terminal(lane, turn, kind, data, socket)
                        await send_many(batch[: index + 1])
                        turn.core.submit()
                        return
                await send_many(batch)
                batch = await socket.recv_batch()
                silence.extend(idle)
        finally:
            silence.cancel()
    except asyncio.CancelledError:
        if not silence.expired:
            await lane.drop_upstream()
            raise
        exc: BaseException = TimeoutError()
    except Exception as caught:  # noqa: BLE001 - every upstream failure mid-turn ends the same way
        exc = caught
    log.warning("provider %s: WebSocket broke mid-turn: %r", route.provider.name, exc)
    await lane.drop_upstream()
    await broke_mid_turn(lane, turn)


async def relay_http(lane: RelayLane, turn: LaneTurn, relay: Relay) -> None:
    record, route = turn.record, relay.route
    record.upstream_transport = Transport.HTTP.value
    progress = turn.progress
    try:
        if relay.first is None:
            raise WireError(
                502,
                "upstream_not_streaming",
                "The upstream did not answer with an event stream.",
                None,
                "server_error",
            )
        batch = relay.first
        record.first_event()
        while True:
            out: list[str] = []
            for event in batch:
                kind = event.type
                if kind in SCRUBBED_EVENTS:
                    event = turn.core.scrub_sse(event)
                if kind in TERMINAL_TYPES:
                    await terminal(lane, turn, kind, event.data, None)
                    out.append(event.data)
                    await lane.send_many(out)
                    turn.core.submit()
                    await relay.opened.finish(relay.batches)
                    return
                if kind in ("response.created", "response.output_item.added", "response.output_item.done"):
                    progress.see(kind, event.data)
                    turn.response_id = progress.response_id
                    await turn.core.created(turn.response_id)
                else:
                    progress.events += 1
                out.append(event.data)
            await lane.send_many(out)
            if turn.stop is not None:
                return await stopped(lane, turn)
            turn.waiting = True
            try:
                batch = await anext(relay.batches)  # type: ignore[arg-type]
            finally:
                turn.waiting = False
    except asyncio.CancelledError:
        if turn.stop is None:
            raise
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        await stopped(lane, turn)
    except (StopAsyncIteration, *TransportError) as exc:
        log.warning("provider %s: HTTP stream broke mid-turn: %r", route.provider.name, exc)
        await broke_mid_turn(lane, turn)
    finally:
        await relay.opened.close()


def refuses_event_type(data: str) -> bool:
    """An upstream ``error`` that refuses a client event's type (an upstream without that event)."""
    try:
        payload = json.loads(data)
    except ValueError:
        return False
    error = payload.get("error") if isinstance(payload.get("error"), dict) else payload
    return error.get("param") == "type" or error.get("code") in (
        "unsupported_event_type",
        "unknown_event_type",
    )


async def stop_on_our_own(lane: RelayLane, turn: LaneTurn, control: str) -> None:
    """An upstream socket that cannot interrupt: its socket is dropped (which stops the response) and
    the client gets what the service sends for an interrupt; what streamed so far is not kept."""
    interrupt = control == "response.interrupt"
    turn.stop = ("interrupted" if interrupt else "cancelled", True)
    turn.progress.response = {"id": turn.response_id, "model": turn.model}
    await stopped(lane, turn)


async def stopped(lane: RelayLane, turn: LaneTurn) -> None:
    """The client interrupted a turn running over upstream HTTP: the request is dropped and the client
    gets what the service sends for an interrupt it applied."""
    assert turn.stop is not None
    reason, discard = turn.stop
    events = interrupted_events(turn.progress, discard, reason, acknowledge=reason == "interrupted")
    for data in events[:-1]:
        await lane.send(data)
    await terminal(lane, turn, "response.incomplete", events[-1], None)
    await lane.send(events[-1])
    turn.core.submit()


async def broke_mid_turn(lane: RelayLane, turn: LaneTurn) -> None:
    """After the first event there is no fallback and no replay: the client gets an error frame."""
    error = WireError(
        502, "upstream_stream_error", "The upstream broke off during the response.", None, "server_error"
    )
    turn.core.broke(error.code)
    lane.connection.cache.evict(lane.name)
    await lane.send_error(error)
    turn.core.submit()


async def terminal(
    lane: RelayLane, turn: LaneTurn, kind: str, data: str, socket: UpstreamSocket | None
) -> None:
    """The turn's terminal event (``Turn.end``: usage, status, breaker, affinity), then the connection-local
    cache kept right for the next turn."""
    record = turn.record
    await turn.core.end(kind, data)
    cache = lane.connection.cache
    response_id = record.outcome.response_id
    if kind in CONTINUABLE and response_id:
        cache.keep(lane.name, Cached(response_id, turn.full_input, record.outcome.output, socket))
    else:
        cache.evict(lane.name)
        if response_id:
            cache.ended(response_id)


def socket_payload(turn: LaneTurn, route: Route, socket: UpstreamSocket, full: bool) -> str:
    """The frame for the upstream socket: the client's text untouched unless something must change."""
    frame = turn.frame
    changes: dict[str, Any] = {}
    if route.upstream_model != turn.model:
        changes["model"] = route.upstream_model
    if "stream_id" in frame and not socket.lanes:
        changes["stream_id"] = None  # the lane is this socket: the gateway tags the events itself
    if frame.get("previous_response_id") and (
        full or turn.cached is None or turn.cached.socket is not socket
    ):
        # The socket that holds the previous response is gone (or never had it): the whole conversation.
        if turn.full_input is None:
            if turn.cached is not None or frame.get("store") is False:
                raise WireError(
                    400,
                    "previous_response_not_found",
                    f"Previous response with id '{frame.get('previous_response_id')}' not found.",
                    "previous_response_id",
                )
        else:
            changes["input"] = turn.full_input
            changes["previous_response_id"] = None
    if not changes:
        return turn.text
    return json.dumps({k: v for k, v in {**frame, **changes}.items() if v is not None or k not in changes})


def http_call(lane: RelayLane, turn: LaneTurn, route: Route) -> HttpCall:
    body = {k: v for k, v in turn.frame.items() if k not in ("type", "generate", "stream_id")}
    body["model"] = route.upstream_model
    body["stream"] = True
    if turn.cached is not None and turn.full_input is not None:
        body["input"] = turn.full_input
        body.pop("previous_response_id", None)
    headers = lane.connection.upstream_headers(route.provider)
    return HttpCall("POST", "/responses", None, json.dumps(body).encode(), None, headers)


async def local_warmup(lane: RelayLane, turn: LaneTurn) -> None:
    """``generate: false`` with no upstream socket: answer as the service does, and keep the input so
    the next turn can chain from this id."""
    frame, record = turn.frame, turn.record
    response_id = "resp_" + secrets.token_hex(24)
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": turn.model,
        "output": [],
        "instructions": frame.get("instructions"),
        "tools": frame.get("tools") or [],
        "tool_choice": frame.get("tool_choice") or "auto",
        "parallel_tool_calls": frame.get("parallel_tool_calls", True),
        "store": frame.get("store", True),
        "error": None,
        "incomplete_details": None,
        "metadata": frame.get("metadata") or {},
        "usage": None,
    }
    record.first_event()
    await lane.send(json.dumps({"type": "response.created", "sequence_number": 0, "response": response}))
    usage = {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    record.upstream_transport = ""
    record.outcome.response_id = response_id
    await turn.core.created(response_id)
    lane.connection.cache.keep(lane.name, Cached(response_id, turn.full_input, [], None))
    completed = {**response, "status": "completed", "usage": usage}
    await lane.send(json.dumps({"type": "response.completed", "sequence_number": 1, "response": completed}))
    turn.core.submit()
