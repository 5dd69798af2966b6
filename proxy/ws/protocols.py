"""One WebSocket turn as its lane runs it, and what the lane and the relaying of its turns need of each
other and of their connection, as protocols: the lane depends on what it uses of a connection, not on the
``Connection`` class that owns it (``proxy.ws.connection``), and the relaying on what it uses of a lane."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from providers.registry import ProviderInfo
from providers.routing import Affinity
from proxy.common.record import TurnRecord
from proxy.common.wire import WireError
from proxy.governance.auth import Client
from proxy.turn import Turn
from proxy.upstream.lanes import LaneView
from proxy.upstream.websocket import UpstreamSocket
from proxy.ws.cache import Cached, ConnectionCache, Progress

SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]
SendMany = Callable[[list[str]], Awaitable[None]]

_relayed_total = 0  # bytes of relayed client events held by all turns of this process


def relayed_total() -> int:
    return _relayed_total


_turns_total = 0  # bytes of response.create frames queued or running in all lanes of this process


def turns_total() -> int:
    return _turns_total


def hold_turn(size: int) -> None:
    global _turns_total
    _turns_total += size


class RelayedEvents:
    """Client events relayed to the turn's upstream socket, kept until the turn ends (to refuse one in
    the service's shape if the upstream does not know it). Their bytes count against the connection's
    and the process's limits: see ``Connection.hold``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any], int]] = []
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self.items)

    def append(self, kind: str, frame: dict[str, Any], size: int) -> None:
        global _relayed_total
        self.items.append((kind, frame, size))
        self.bytes += size
        _relayed_total += size

    def pop(self, index: int = -1) -> tuple[str, dict[str, Any]]:
        global _relayed_total
        kind, frame, size = self.items.pop(index)
        self.bytes -= size
        _relayed_total -= size
        return kind, frame

    def clear(self) -> None:
        global _relayed_total
        _relayed_total -= self.bytes
        self.items.clear()
        self.bytes = 0


@dataclass
class LaneTurn:
    """One response.create as its lane runs it."""

    frame: dict[str, Any]
    text: str  # the frame as received, relayed untouched when nothing in it changes
    model: str
    full_input: list[Any] | None  # the whole conversation so far, when the connection knows it
    cached: Cached | None  # the connection's response this turn continues
    core: Turn  # admission, routing, bookkeeping and the request-log row (``proxy.turn``)
    socket: UpstreamSocket | None = None  # the upstream socket it runs on, once it runs on one
    progress: Progress = field(default_factory=Progress)
    response_id: str = ""
    relayed: RelayedEvents = field(default_factory=RelayedEvents)  # client events sent upstream
    stop: tuple[str, bool] | None = None  # (reason, discard) once the client interrupted it over HTTP
    waiting: bool = False  # reading upstream HTTP: an interrupt may cancel the read at once

    @property
    def record(self) -> TurnRecord:
        return self.core.record


class LaneConnection(Protocol):
    """What a lane needs of its client connection (``proxy.ws.connection.Connection`` is one)."""

    client: Client
    headers: dict[str, str]
    send_text: SendText
    send_many: SendMany
    forced_transport: str | None
    pinned: ProviderInfo | None
    cache: ConnectionCache
    pending_bytes: int
    last_activity: float
    trace_link: Any
    ended: bool

    def check_age(self) -> None: ...

    def kept(self) -> list[TurnRecord] | None: ...

    def preferred(self, affinity: Affinity) -> Affinity: ...

    def upstream_headers(self, provider: ProviderInfo) -> dict[str, str]: ...

    async def remember_route(self, provider_id: int, upstream_headers: dict[str, str]) -> None: ...

    def lanes_usable(self, view: Any) -> bool: ...

    def retire(self, socket: Any) -> None: ...

    async def lane_socket(self, stream_id: str, route: Any, record: TurnRecord) -> LaneView | None: ...


class RelayLane(Protocol):
    """What relaying a turn to the client needs of its lane (``proxy.ws.lane.Lane`` is one)."""

    name: str | None
    connection: LaneConnection

    async def send(self, data: str) -> None: ...

    async def send_many(self, texts: list[str], tagged: bool = False) -> None: ...

    async def send_error(self, error: WireError) -> None: ...

    async def drop_upstream(self) -> None: ...
