"""What a WebSocket connection remembers of its responses, and the events the service would send when a
turn over upstream HTTP is interrupted (the service's connection-local cache, per lane lineage)."""

import json
from dataclasses import dataclass, field
from typing import Any

from proxy.common.wire import WireError
from proxy.upstream.websocket import UpstreamSocket


def as_items(value: Any) -> list[Any]:
    """``input`` as a list of items (a bare string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else [value]


@dataclass
class Cached:
    """A finished (or interrupted) response: what produced it and what it produced."""

    response_id: str
    full_input: list[Any] | None  # None: it continued a response only the upstream knows
    output: list[Any]
    socket: UpstreamSocket | None  # the upstream socket whose own cache holds it


class ConnectionCache:
    """The last response of every lane. The service keeps one response per connection; with lanes each
    lane keeps its own, and any lane may continue any of them (``previous_response_id`` is lineage)."""

    def __init__(self) -> None:
        self.by_lane: dict[str | None, Cached] = {}
        self.finished: dict[str, None] = {}  # ids of responses that ended here, oldest first (bounded)

    def find(self, response_id: str | None) -> Cached | None:
        if response_id is None:
            return None
        for cached in self.by_lane.values():
            if cached.response_id == response_id:
                return cached
        return None

    def keep(self, lane: str | None, cached: Cached) -> None:
        self.by_lane[lane] = cached
        self.ended(cached.response_id)

    def ended(self, response_id: str) -> None:
        self.finished[response_id] = None
        if len(self.finished) > 256:
            self.finished.pop(next(iter(self.finished)))

    def evict(self, lane: str | None) -> None:
        self.by_lane.pop(lane, None)


@dataclass
class Progress:
    """What a turn relayed from upstream HTTP so far, read from the few events that say it: enough to
    end the turn as the service ends an interrupted one."""

    response: dict[str, Any] = field(default_factory=dict)
    done: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    partial: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    events: int = 0

    def see(self, kind: str, data: str) -> None:
        self.events += 1
        if kind == "response.created":
            response = json.loads(data).get("response")
            if isinstance(response, dict):
                self.response = response
        elif kind == "response.output_item.added":
            event = json.loads(data)
            item = event.get("item") or {}
            self.partial[str(item.get("id"))] = (int(event.get("output_index") or 0), item)
        elif kind == "response.output_item.done":
            event = json.loads(data)
            item = event.get("item") or {}
            self.partial.pop(str(item.get("id")), None)
            self.done.append((int(event.get("output_index") or 0), item))

    @property
    def response_id(self) -> str:
        return str(self.response.get("id") or "")


def interrupted_events(progress: Progress, discard: bool, reason: str, acknowledge: bool) -> list[str]:
    """The events the service sends for an interrupt it applied: the acknowledgement, the partial items
    (dropped with ``discard``, else finished as incomplete and kept), then ``response.incomplete``."""
    rid = progress.response_id
    sequence = progress.events
    events: list[dict[str, Any]] = []
    if acknowledge:
        events.append(
            {"type": "response.interrupt.accepted", "response_id": rid, "sequence_number": sequence}
        )
        sequence += 1
    output = [item for _, item in sorted(progress.done, key=lambda pair: pair[0])]
    for item_id, (index, item) in progress.partial.items():
        if discard:
            events.append(
                {
                    "type": "response.output_item.interrupted",
                    "response_id": rid,
                    "item_id": item_id,
                    "output_index": index,
                    "sequence_number": sequence,
                }
            )
        else:
            kept = {**item, "status": "incomplete"}
            output.append(kept)
            events.append(
                {
                    "type": "response.output_item.done",
                    "output_index": index,
                    "item": kept,
                    "sequence_number": sequence,
                }
            )
        sequence += 1
    response = {
        **progress.response,
        "id": rid,
        "object": "response",
        "status": "incomplete",
        "incomplete_details": {"reason": reason},
        "output": output,
        "usage": progress.response.get("usage"),
    }
    events.append({"type": "response.incomplete", "sequence_number": sequence, "response": response})
    return [json.dumps(event) for event in events]


def interrupt_failed(response_id: str, code: str, message: str) -> str:
    """The service's answer to an interrupt it cannot apply: non-terminal, the session goes on."""
    error = {"type": "invalid_request_error", "code": code, "message": message}
    return json.dumps({"type": "response.interrupt.failed", "response_id": response_id, "error": error})


def refusal(kind: str, frame: dict[str, Any], message: str) -> str:
    """A client event the gateway cannot carry out, refused in the service's own shape for it."""
    target = frame.get("previous_response_id") if kind == "response.steer" else frame.get("response_id")
    if kind == "response.steer":
        error = {"type": "invalid_request_error", "code": "steering_unavailable", "message": message}
        steer = {"previous_response_id": target, "input": frame.get("input")}
        return json.dumps({"type": "response.steer.failed", "steer": steer, "error": error})
    if kind == "response.inject":
        error = {"code": "response_not_found", "message": message}
        return json.dumps(
            {
                "type": "response.inject.failed",
                "response_id": target,
                "input": frame.get("input"),
                "error": error,
            }
        )
    return WireError(
        400, "unsupported_event_type", f"Unsupported client event type {kind!r}.", "type"
    ).ws_frame()
