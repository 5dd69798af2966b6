"""Client events that are not turns: interrupts and cancels act on the turn in flight at once; steering,
injection and unknown types go to its upstream socket or are refused in the service's shape."""

import json
import logging
from typing import Any, Protocol

from django.conf import settings

from proxy.common.wire import WireError
from proxy.server.ws_protocol import waiting_total
from proxy.upstream.websocket import UpstreamSocket
from proxy.ws.cache import interrupt_failed, refusal
from proxy.ws.lane import Lane
from proxy.ws.protocols import Close, LaneConnection, LaneTurn, relayed_total, turns_total

log = logging.getLogger("sluice.ws")


class ControlledConnection(LaneConnection, Protocol):
    """What the control events need of a connection beyond what its lanes do: the lanes themselves."""

    default: Lane
    lanes: dict[str, Lane]
    close_client: Close

    def all_lanes(self) -> list[Lane]: ...


def in_flight(
    connection: ControlledConnection, response_id: object, stream_id: object = None
) -> tuple[Lane, LaneTurn] | None:
    """The turn a control event names: by response id, else the one in flight on its lane."""
    candidates = [(lane, lane.current) for lane in connection.all_lanes() if lane.current is not None]
    for lane, turn in candidates:
        if response_id and turn.response_id == response_id:  # type: ignore[union-attr]
            return lane, turn  # type: ignore[return-value]
    if not response_id:
        lane = connection.lanes.get(stream_id) if isinstance(stream_id, str) else connection.default  # type: ignore[assignment]
        if lane is not None and lane.current is not None:
            return lane, lane.current
    return None


def names_another(frame: dict[str, Any], turn: LaneTurn) -> bool:
    """Whether a client event also names a response other than the turn in flight it acts on: it is
    not relayed (the upstream would act on a response that may be another key's)."""
    named = (frame.get("response_id"), frame.get("previous_response_id"))
    return any(rid and rid != turn.response_id for rid in named)


async def control(connection: ControlledConnection, kind: str, frame: dict[str, Any], text: str) -> None:
    """Interrupt or cancel the turn in flight, at once: relayed on its upstream socket, or (over
    upstream HTTP) its request dropped and the service's events written here."""
    response_id = frame.get("response_id")
    found = in_flight(connection, response_id, frame.get("stream_id"))
    if found is not None and names_another(frame, found[1]):
        found = None
    if found is None:
        await not_in_flight(connection, kind, frame, response_id)
        return
    lane, turn = found
    if turn.socket is not None and turn.socket.is_open:
        if await over_limits(connection, turn, text):
            return
        turn.relayed.append(kind, frame, len(text))
        await relay(turn.socket, text if turn.socket.lanes else without_stream_id(frame, text))
        return
    if turn.stop is None:
        reason = "interrupted" if kind == "response.interrupt" else "cancelled"
        discard = (
            kind == "response.interrupt"
            and frame.get("mode", "discard_partial_items") == "discard_partial_items"
        )
        turn.stop = (reason, discard)
        if turn.waiting and lane.task is not None:
            lane.task.cancel()


async def not_in_flight(
    connection: ControlledConnection, kind: str, frame: dict[str, Any], response_id: object
) -> None:
    rid = response_id if isinstance(response_id, str) else ""
    finished = rid in connection.cache.finished
    if kind == "response.interrupt":
        code = "response_already_completed" if finished else "response_not_found"
        message = "The response already finished." if finished else "No response with this id is in flight."
        await lane_of(connection, frame).send(interrupt_failed(rid, code, message))
    else:
        error = WireError(404, "response_not_found", "No response in flight to cancel.", "response_id")
        await lane_of(connection, frame).send_error(error)


def lane_of(connection: ControlledConnection, frame: dict[str, Any]) -> Lane:
    stream_id = frame.get("stream_id")
    return (
        connection.lanes.get(stream_id, Lane(connection, stream_id))
        if isinstance(stream_id, str)
        else connection.default
    )


async def relay_other(connection: ControlledConnection, kind: str, frame: dict[str, Any], text: str) -> None:
    """Steering, injection and event types the gateway need not understand: relayed on the upstream
    socket of the turn in flight; otherwise refused in the service's shape, the socket stays open."""
    target = frame.get("previous_response_id") if kind == "response.steer" else frame.get("response_id")
    found = in_flight(connection, target, frame.get("stream_id"))
    if found is not None and names_another(frame, found[1]):
        found = None
    if found is not None and found[1].socket is not None and found[1].socket.is_open:
        socket = found[1].socket
        if await over_limits(connection, found[1], text):
            return
        found[1].relayed.append(kind, frame, len(text))
        await relay(socket, text if socket.lanes else without_stream_id(frame, text))
        return
    await refuse(
        lane_of(connection, frame),
        kind,
        frame,
        "This event needs a response in flight on an upstream WebSocket.",
    )


async def over_limits(connection: ControlledConnection, turn: LaneTurn, text: str) -> bool:
    """Whether holding this event would take the connection past its limit (queued turns and relayed
    events together within one largest frame) or the process past its total: then the client gets an
    error frame and the socket closes with 1009, as for a frame too large."""
    held = sum(lane.current.relayed.bytes for lane in connection.all_lanes() if lane.current is not None)
    size = len(text)
    if connection.pending_bytes + held + size > settings.SLUICE_WS_MAX_FRAME_BYTES:
        why = "Too much is already waiting on this connection."
    elif waiting_total() + relayed_total() + turns_total() > settings.SLUICE_WS_TOTAL_BUFFER_BYTES:
        # (this event is counted in waiting_total() already: the server holds it until this returns)
        why = "The gateway is holding too much data; retry later."
    else:
        return False
    log.warning("closing client socket of key %s: %s", connection.client.key_name, why)
    await connection.send_text(WireError(429, "too_many_queued_requests", why).ws_frame())
    await connection.close_client(1009, "too much data held for this connection")
    return True


async def refuse(lane: Lane, kind: str, frame: dict[str, Any], message: str) -> None:
    await lane.send(refusal(kind, frame, message))


async def relay(socket: UpstreamSocket, text: str) -> None:
    """A client event onto the upstream socket of the turn in flight. If the socket is gone, the turn's
    own read sees that and ends the turn; the client event has nothing left to act on."""
    try:
        await socket.send(text)
    except Exception as exc:  # noqa: BLE001 - a closing socket raises one of several errors
        log.info("could not relay a client event upstream: %r", exc)


def without_stream_id(frame: dict[str, Any], text: str) -> str:
    """A client event for a lane's own upstream socket: the gateway tags that lane's events itself."""
    if "stream_id" not in frame:
        return text
    return json.dumps({k: v for k, v in frame.items() if k != "stream_id"})
