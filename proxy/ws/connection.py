"""One client WebSocket connection: its lanes, the connection-local cache, deadlines, and the client
events that are not turns (interrupts, steering, acknowledgements), classified on receipt without I/O.

Turns run in their lane (``proxy.ws.lane``); a control event acts on the turn in flight at once.
"""

import asyncio
import dataclasses
import logging
import time
from typing import Any

from django.conf import settings

from providers.registry import ProviderInfo
from providers.routing import Affinity
from proxy.common.record import TurnRecord
from proxy.common.wire import WireError, parse_body
from proxy.governance.auth import Client
from proxy.governance.live_policy import KeyWatch
from proxy.server.ws_protocol import waiting_total
from proxy.turn import Turn
from proxy.turn.sticky_token import TurnState, forwarded, remember
from proxy.upstream.lanes import LaneView, SharedUpstream
from proxy.upstream.websocket import UpstreamSocket
from proxy.ws import controls as ws_controls
from proxy.ws.cache import ConnectionCache
from proxy.ws.lane import Lane, drop_pending
from proxy.ws.protocols import Close, SendMany, SendText, relayed_total, turns_total

log = logging.getLogger("sluice.ws")


MAX_IN_FLIGHT = 16  # responses in flight on one connection, all lanes together
MAX_LANES = 32  # named lanes on one connection
CONTROL = frozenset({"response.interrupt", "response.cancel"})
ABSORBED = frozenset({"response.processed"})


class Connection:
    def __init__(
        self,
        client: Client,
        headers: dict[str, str],
        send_text: SendText,
        close: Close,
        *,
        forced_transport: str | None = None,
        pinned: ProviderInfo | None = None,
        turn_state: TurnState | None = None,
        send_many: SendMany | None = None,
    ) -> None:
        self.client = client  # as of the last response.create (``watch`` keeps it current)
        self.watch = KeyWatch(client, self._revoked)
        self.headers = headers
        self.send_text = send_text
        self.send_many = send_many or self._one_by_one
        self.close_client = close
        self.forced_transport = forced_transport
        self.pinned = pinned  # the provider test: this provider only, whatever routing would say
        self.turn_state = turn_state
        self.opened_at = time.monotonic()
        self.last_activity = self.opened_at
        self.frames_seen = 0
        self.cache = ConnectionCache()
        self.default = Lane(self, None)
        self.lanes: dict[str, Lane] = {}
        self.pending_bytes = 0  # frames waiting in all lanes: together at most one largest frame
        self.shared: SharedUpstream | None = None  # the upstream socket the named lanes share
        self.no_lanes: set[int] = set()  # providers whose upstream answered a stream_id without it
        self.records: list[TurnRecord] = []  # kept only when a caller (the provider test) asks for them
        self.keep_records = False
        self.trace_link: Any = None  # the handshake's span context, which this socket's turns link to
        self.ended = False  # shutdown began: the client is gone or going
        # An idle connection costs no task: a lane's worker exists while it has turns, the deadline
        # check is a timer handle.
        self._closing: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(
            min(settings.SLUICE_WS_FIRST_FRAME_TIMEOUT, settings.SLUICE_WS_IDLE_TIMEOUT), self._check_deadline
        )

    # ----- lifecycle -----

    async def _one_by_one(self, texts: list[str]) -> None:
        for text in texts:
            await self.send_text(text)

    def all_lanes(self) -> list[Lane]:
        return [self.default, *self.lanes.values()]

    @property
    def busy(self) -> bool:
        return any(lane.task is not None for lane in self.all_lanes())

    @property
    def upstream(self) -> UpstreamSocket | None:
        return self.default.upstream

    async def receive(self, text: str) -> None:
        self.frames_seen += 1
        self.last_activity = time.monotonic()
        if len(text) > settings.SLUICE_WS_MAX_FRAME_BYTES:
            await self.close_client(1009, "frame too large")
            return
        try:
            frame = parse_body(text)
        except WireError as error:
            await self.send_text(error.ws_frame())
            return
        kind = frame.get("type")
        if kind == "response.create" or not isinstance(kind, str):
            await self._create(frame, text)
        elif kind in CONTROL:
            await ws_controls.control(self, kind, frame, text)
        elif kind not in ABSORBED:
            await ws_controls.relay_other(self, kind, frame, text)

    async def turn(self, text: str) -> None:
        """Run one turn on the default lane to its end (the provider test)."""
        await self.default.run(parse_body(text), text)

    async def shutdown(self) -> None:
        self.ended = True
        self._timer.cancel()
        self.watch.cancel()
        tasks = [lane.task for lane in self.all_lanes()] + [self._closing]
        for task in tasks:
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        for lane in self.all_lanes():
            drop_pending(lane)
            await lane.drop_upstream()
        self.pending_bytes = 0
        if self.shared is not None:
            await self.shared.close()

    def _check_deadline(self) -> None:
        """Close connections that never speak, or that stay idle too long between turns."""
        now = time.monotonic()
        if self.frames_seen == 0:
            deadline = self.opened_at + settings.SLUICE_WS_FIRST_FRAME_TIMEOUT
            reason = "no response.create received in time"
        else:
            deadline = self.last_activity + settings.SLUICE_WS_IDLE_TIMEOUT
            reason = "idle timeout"
        if self.busy:
            deadline = now + settings.SLUICE_WS_IDLE_TIMEOUT
        if now >= deadline:
            log.info("closing client socket of key %s: %s", self.client.key_name, reason)
            self._closing = asyncio.ensure_future(self.close_client(1000, reason))
            return
        delay = min(deadline - now, settings.SLUICE_WS_IDLE_TIMEOUT, settings.SLUICE_WS_FIRST_FRAME_TIMEOUT)
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_deadline)

    def check_age(self) -> None:
        if time.monotonic() - self.opened_at > settings.SLUICE_WS_MAX_AGE:
            minutes = int(settings.SLUICE_WS_MAX_AGE // 60)
            raise WireError(
                400,
                "websocket_connection_limit_reached",
                f"Responses websocket connection limit reached ({minutes} minutes). "
                "Create a new websocket connection to continue.",
            )

    def kept(self) -> list[TurnRecord] | None:
        """Where this connection's turn records are kept, when a caller (the provider test) asks for them."""
        return self.records if self.keep_records else None

    def _refused(self, error: WireError) -> WireError:
        """A response.create refused before it reached a lane still leaves its request-log row."""
        return Turn(self.client, "websocket", kept=self.kept()).refuse(error)

    # ----- routing hooks for lanes -----

    def preferred(self, affinity: Affinity) -> Affinity:
        state = self.turn_state
        if state is None or state.provider_id is None:
            return affinity
        return dataclasses.replace(affinity, provider_id=state.provider_id)

    def upstream_headers(self, provider: ProviderInfo) -> dict[str, str]:
        return forwarded(self.headers, self.turn_state, provider.id)

    async def remember_route(self, provider_id: int, upstream_headers: dict[str, str]) -> None:
        """The provider now serving this connection, for a client that reconnects with its token."""
        if self.turn_state is not None:
            await remember(self.turn_state, provider_id, upstream_headers)

    # ----- the upstream socket named lanes share -----

    def lanes_usable(self, view: Any) -> bool:
        """Whether lane ``view`` may go on using the shared socket: while it is open and not retired, and
        either the upstream speaks lanes or this lane is the one that found out it does not (the socket is
        then that lane's own, so its conversation stays on one upstream socket)."""
        shared = view.shared
        if shared is not self.shared or not shared.is_open or shared.retired:
            return False
        return shared.speaks is not False or shared.probe == view.stream_id

    def retire(self, socket: Any) -> None:
        """The upstream retired this socket (its lifetime): lanes on it move to a fresh one."""
        if isinstance(socket, LaneView):
            socket.shared.retired = True

    async def lane_socket(self, stream_id: str, route: Any, record: TurnRecord) -> LaneView | None:
        """Lane ``stream_id``'s view of the shared upstream socket; None: it takes a socket of its own
        (the upstream does not speak lanes, or another lane is finding out)."""
        provider = route.provider
        if provider.id in self.no_lanes:
            return None
        shared = self.shared
        if shared is not None and shared.speaks is False:
            self.no_lanes.add(provider.id)
            if shared.probe is None:
                await shared.close()
                self.shared = None
            return None
        if shared is not None and (
            not shared.is_open
            or shared.retired
            or shared.provider != provider
            or time.monotonic() - shared.socket.opened_at >= settings.SLUICE_UPSTREAM_WS_MAX_AGE
        ):
            if shared.inboxes and shared.is_open and not shared.retired and shared.provider != provider:
                return None  # in use for another provider's lanes
            shared.close_when_idle()
            self.shared = shared = None
        if shared is None:
            socket = await UpstreamSocket.open(
                provider,
                self.upstream_headers(provider),
                min(provider.connect_timeout, settings.SLUICE_UPSTREAM_WS_HANDSHAKE_TIMEOUT),
            )
            record.ws_handshake_ms = socket.handshake_ms
            await self.remember_route(provider.id, socket.handshake_headers)
            shared = self.shared = SharedUpstream(socket)
        if shared.speaks is None:
            if shared.probe is not None:
                return None
            shared.probe = stream_id
        return shared.view(stream_id)

    # ----- client events -----

    async def _revoked(self, error: WireError) -> None:
        await self.send_text(self._refused(error).ws_frame())
        await self.close_client(1008, "API key revoked")

    async def _create(self, frame: dict[str, Any], text: str) -> None:
        fresh = await self.watch.refresh()  # the key's policy now, not at connect time
        if fresh is None:
            return
        self.client = fresh
        stream_id = frame.get("stream_id")
        lane = self.default if stream_id is None else self._named_lane(stream_id)
        if isinstance(lane, WireError):
            named = Lane(self, stream_id if isinstance(stream_id, str) else None)
            await named.send_error(self._refused(lane))
            return
        error = over_capacity(self, lane, text)
        if error is not None:
            await lane.send_error(self._refused(error))
            return
        lane.enqueue(frame, text)

    def _named_lane(self, stream_id: object) -> Lane | WireError:
        if not isinstance(stream_id, str) or not stream_id or len(stream_id) > 64:
            return WireError(
                400, "invalid_stream_id", "'stream_id' must be a string of 1 to 64 characters.", "stream_id"
            )
        lane = self.lanes.get(stream_id)
        if lane is None:
            if len(self.lanes) >= MAX_LANES:
                error = WireError(
                    400,
                    "websocket_stream_limit_reached",
                    f"At most {MAX_LANES} lanes per connection.",
                    "stream_id",
                )
                return error
            lane = self.lanes[stream_id] = Lane(self, stream_id)
        return lane


def over_capacity(connection: Connection, lane: Lane, text: str) -> WireError | None:
    """Why a ``response.create`` cannot wait in ``lane`` now (None: it can): the lane's queue, what all
    lanes of the connection hold, what the whole process holds, and the responses in flight."""
    if lane.task is not None and lane.name is None and len(lane.pending) >= settings.SLUICE_WS_QUEUE_LIMIT:
        limit = settings.SLUICE_WS_QUEUE_LIMIT
        return WireError(429, "too_many_queued_requests", f"At most {limit} turns may wait on a connection.")
    if lane.task is not None and connection.pending_bytes + len(text) > settings.SLUICE_WS_MAX_FRAME_BYTES:
        # What waits is held in memory: all lanes' queued frames together stay within one frame.
        return WireError(429, "too_many_queued_requests", "Too much is already waiting on this connection.")
    if waiting_total() + relayed_total() + turns_total() > settings.SLUICE_WS_TOTAL_BUFFER_BYTES:
        # This frame is counted already (the server holds it until this returns): the turns of all
        # connections together hold no more than the process's total.
        return WireError(
            429, "too_many_queued_requests", "The gateway is holding too much data; retry later."
        )
    if sum(each.load for each in connection.all_lanes()) >= MAX_IN_FLIGHT:
        return WireError(
            400,
            "websocket_stream_limit_reached",
            f"At most {MAX_IN_FLIGHT} responses may be in flight on one connection.",
            "stream_id",
        )
    return None
