"""One lane of a client WebSocket: its turns in order, over its own upstream socket or upstream HTTP.

A connection without ``stream_id`` has one lane (named None); named lanes run concurrently, each with
its own upstream socket, and every event relayed on a named lane carries its ``stream_id``.
"""

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from django.conf import settings

from providers import routing
from providers.registry import enabled_providers
from providers.routing import Plan, Route
from proxy.common.deadline import Deadline
from proxy.common.record import TurnRecord
from proxy.common.transport import FallbackReason
from proxy.common.wire import WireError, event_type, validate_create_frame
from proxy.governance import limits
from proxy.governance.limits import LimitError
from proxy.governance.refusals import for_client
from proxy.turn import Turn
from proxy.turn.failover import FallBack, SocketTurn
from proxy.turn.turn import no_route
from proxy.turn.upstream import ProviderFailure, ProvidersFailed, Relay, open_route, timeout_error
from proxy.upstream.lanes import LaneView, stream_id_of
from proxy.upstream.websocket import HANDSHAKE_HEADERS, UpstreamSocket, public_url
from proxy.usage import tracing
from proxy.ws import relay as ws_relay
from proxy.ws.cache import as_items
from proxy.ws.protocols import LaneConnection, LaneTurn, hold_turn
from settings_app.runtime import system_settings

log = logging.getLogger("sluice.ws")

LIMIT_REACHED = "websocket_connection_limit_reached"


def retrieve(task: "asyncio.Future[Any]") -> None:
    """A lane's task ends on its own, unawaited: its failure is logged here, not lost (asyncio would say
    "Task exception was never retrieved" when the task is collected)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("a WebSocket lane task failed", exc_info=task.exception())


def drop_pending(lane: "Lane") -> None:
    """The connection closes: the lane's turns still queued never run."""
    for _, text in lane.pending:
        hold_turn(-len(text))
    lane.pending.clear()


def previous_of(frame: dict[str, Any]) -> object:
    return frame.get("previous_response_id")


class Lane:
    def __init__(self, connection: LaneConnection, name: str | None) -> None:
        self.connection = connection
        self.name = name
        self.pending: deque[tuple[dict[str, Any], str]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.upstream: UpstreamSocket | None = None
        self.current: LaneTurn | None = None
        self.forced_transport = connection.forced_transport
        self.suffix = f',"stream_id":{json.dumps(name)}}}' if name is not None else ""

    @property
    def load(self) -> int:
        return len(self.pending) + (self.task is not None)

    def enqueue(self, frame: dict[str, Any], text: str) -> None:
        self.pending.append((frame, text))
        self.connection.pending_bytes += len(text)
        hold_turn(len(text))  # given back when the turn ends, or by drop_pending
        if self.task is None:
            self.task = asyncio.ensure_future(self._drain())
            self.task.add_done_callback(retrieve)

    async def _drain(self) -> None:
        try:
            while self.pending:
                frame, text = self.pending.popleft()
                self.connection.pending_bytes -= len(text)
                try:
                    await self.run(frame, text)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("unexpected error in a WebSocket turn")
                    await self.send_error(
                        WireError(
                            500,
                            "internal_error",
                            "The gateway failed to run this turn.",
                            None,
                            "server_error",
                        )
                    )
                finally:
                    hold_turn(-len(text))
                    self.connection.last_activity = time.monotonic()
        finally:
            self.task = None

    # ----- what reaches the client -----

    def tag(self, data: str) -> str:
        """The event as the client receives it on this lane (named lanes: with their ``stream_id``)."""
        if self.suffix and data.endswith("}"):
            return data[:-1] + self.suffix
        return data

    async def send(self, data: str) -> None:
        await self.connection.send_text(self.tag(data) if self.suffix else data)

    async def send_many(self, texts: list[str], tagged: bool = False) -> None:
        """Events for the client; ``tagged``: they came from a lanes socket and carry their stream_id
        already (all but connection-level ones, tagged here)."""
        if not self.suffix:
            await self.connection.send_many(texts)
        elif tagged:
            await self.connection.send_many([t if stream_id_of(t) else self.tag(t) for t in texts])
        else:
            await self.connection.send_many([self.tag(text) for text in texts])

    async def send_error(self, error: WireError) -> None:
        await self.send(error.ws_frame())

    # ----- one turn -----

    async def run(self, frame: dict[str, Any], text: str) -> None:
        connection = self.connection
        core = Turn(
            connection.client,
            "websocket",
            "provider_test" if connection.pinned is not None else "responses",
            parent=tracing.turn_parent(frame),
            link=connection.trace_link,
            kept=connection.kept(),
        )
        counted = False  # by the admission: an error before it still counts against the key's rate
        try:
            model = validate_create_frame(frame)
            core.ask(model, frame, connection.headers)
            connection.check_age()
            turn = self.prepare(frame, text, model, core)
            counted = True
            await core.admit(limits.TURN, limits.estimate(frame, len(text)))
            if turn.cached is None and frame.get("previous_response_id"):
                # Not this connection's own (those are in its cache): whose is it?
                await core.require_owner(previous_of(frame), previous=True)
            self.current = turn
            await self._route(turn)
        except WireError as error:
            if not counted:
                error = await limits.count_invalid(connection.client, error)
            if not isinstance(error, LimitError):  # refused before it reached anyone: the cache holds
                connection.cache.evict(self.name)
            core.refuse(error)  # every refused turn leaves a row, also one without a model
            await self.send_error(for_client(error, connection.headers))  # the row keeps its own status
        except asyncio.CancelledError:
            core.gone()
            core.submit()
            raise
        finally:
            if self.current is not None:
                self.current.relayed.clear()
            self.current = None
            await core.close()

    def prepare(self, frame: dict[str, Any], text: str, model: str, core: Turn) -> LaneTurn:
        previous = frame.get("previous_response_id") or None
        cached = self.connection.cache.find(previous)
        if previous is not None and cached is None and frame.get("store") is False:
            raise WireError(
                400,
                "previous_response_not_found",
                f"Previous response with id '{previous}' not found.",
                "previous_response_id",
            )
        new_items = as_items(frame.get("input"))
        if previous is None:
            full_input: list[Any] | None = new_items
        elif cached is not None and cached.full_input is not None:
            full_input = [*cached.full_input, *cached.output, *new_items]
        else:
            full_input = None  # continues a response stored upstream; only the upstream knows its input
        core.affinity = routing.affinity_for(self.connection.client.key_id, previous, core.record.session_id)
        return LaneTurn(frame, text, model, full_input, cached, core)

    async def _route(self, turn: LaneTurn) -> None:
        upstream_websockets = (await system_settings.aget()).upstream_websockets
        live = await live_plan(self, turn.model, upstream_websockets)
        core = turn.core
        last: WireError | None = None
        if live is not None:
            # The live upstream socket holds the connection-local cache: the turn stays on it, with no
            # routing look-up; only if it fails do the other providers come into play.
            try:
                return await self._relay(turn, await core.open_for_lane(live, self, upstream_websockets))
            except ProvidersFailed as failed:
                if self.connection.pinned is not None:  # the provider test tries its provider only
                    raise
                last = failed
        assert core.affinity is not None
        try:
            plan = await core.routes(turn.model, self.connection.preferred(core.affinity))
        except WireError:
            if last is not None:
                raise last from None
            raise
        routes = [r for r in plan.routes if live is None or r.provider.id != live.routes[0].provider.id]
        if not routes:
            raise last if last is not None else no_route(turn.model)
        plan = Plan(routes, plan.session_provider)
        await self._relay(turn, await core.open_for_lane(plan, self, upstream_websockets))

    async def _relay(self, turn: LaneTurn, opened: SocketTurn | Relay | None) -> None:
        if isinstance(opened, SocketTurn):
            await ws_relay.relay_socket(self, turn, opened)
        elif opened is not None:
            await ws_relay.relay_http(self, turn, opened)

    # ----- the runner's SocketSource -----

    def reusable(self, route: Route) -> bool:
        upstream = self.upstream
        return upstream is not None and upstream.provider == route.provider and upstream.is_open

    async def socket_for(self, route: Route, record: TurnRecord) -> UpstreamSocket:
        upstream = self.upstream
        if isinstance(upstream, LaneView) and not self.connection.lanes_usable(upstream):
            await self.drop_upstream()
            upstream = None
        if self.reusable(route) and upstream is not None:
            if time.monotonic() - upstream.opened_at < settings.SLUICE_UPSTREAM_WS_MAX_AGE:
                return upstream
            log.info("provider %s: rotating an upstream socket near its age limit", route.provider.name)
        await self.drop_upstream()
        record.upstream_ws_url = public_url(route.provider.websocket_url)
        if self.name is not None:
            view = await self.connection.lane_socket(self.name, route, record)
            if view is not None:  # the upstream speaks lanes (or is being asked): one socket for all
                self.upstream = view
                return view
        upstream = await UpstreamSocket.open(
            route.provider,
            self.connection.upstream_headers(route.provider),
            min(route.provider.connect_timeout, settings.SLUICE_UPSTREAM_WS_HANDSHAKE_TIMEOUT),
        )
        record.ws_handshake_ms = upstream.handshake_ms
        self.upstream = upstream
        await self.connection.remember_route(upstream.provider.id, upstream.handshake_headers)
        return upstream

    @property
    def client_gone(self) -> bool:  # the client's socket is closing: a failure now is not the provider's
        return self.connection.ended

    async def drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await upstream.close()

    async def run_on_socket(
        self, route: Route, socket: UpstreamSocket, record: TurnRecord
    ) -> tuple[UpstreamSocket, str]:
        turn = self.current
        assert turn is not None
        first = await first_event(self, route, socket, ws_relay.socket_payload(turn, route, socket, False))
        if event_type(first) == "error" and LIMIT_REACHED in first:
            # The upstream socket reached the service's lifetime: a fresh one, the whole conversation,
            # before anything reaches the client; HTTP only if that fails too.
            self.connection.retire(socket)
            log.info(
                "provider %s: upstream socket at its limit; replaying on a fresh one", route.provider.name
            )
            await self.drop_upstream()
            socket = await self.socket_for(route, record)
            first = await first_event(self, route, socket, ws_relay.socket_payload(turn, route, socket, True))
            if event_type(first) == "error" and LIMIT_REACHED in first:
                await self.drop_upstream()
                raise FallBack(FallbackReason.CLOSED_BEFORE_FIRST_EVENT)
        turn.socket = socket
        return socket, first

    async def open_http(self, route: Route, record: TurnRecord) -> Relay | None:
        turn = self.current
        assert turn is not None
        record.upstream_transport = "http"
        if turn.frame.get("generate") is False:
            await ws_relay.local_warmup(self, turn)
            return None
        relay = await open_route(route, record, ws_relay.http_call(self, turn, route))
        returned = {k: v for k, v in relay.opened.response.headers.items() if k.lower() in HANDSHAKE_HEADERS}
        await self.connection.remember_route(route.provider.id, {k.lower(): v for k, v in returned.items()})
        return relay


async def first_event(lane: Lane, route: Route, socket: UpstreamSocket, text: str) -> str:
    """Send the turn on ``socket`` and read its first event; a failure before it may fall back to HTTP."""
    silence = Deadline(route.provider.first_byte_timeout)
    try:
        await socket.send(text)
        return await socket.recv()
    except asyncio.CancelledError:
        await lane.drop_upstream()
        if not silence.expired:
            raise
    except Exception as exc:  # noqa: BLE001 - every failure before the first event may fall back
        log.info("provider %s: WebSocket failed before the first event: %r", route.provider.name, exc)
        await lane.drop_upstream()
        raise FallBack(FallbackReason.CLOSED_BEFORE_FIRST_EVENT) from None
    finally:
        silence.cancel()
    raise ProviderFailure(timeout_error(route))


async def live_plan(lane: Lane, model: str, upstream_websockets: bool) -> Plan | None:
    """The plan of a turn that stays where the lane is: its pinned provider (the provider test) or its
    live upstream socket, when that still serves ``model``; None: route afresh."""
    pinned = lane.connection.pinned
    if pinned is not None:
        return Plan([Route(pinned, pinned.upstream_model(model), None)], None)
    upstream = lane.upstream
    if upstream is None or not upstream.is_open or not upstream_websockets:
        return None
    provider = upstream.provider
    if provider not in (await enabled_providers.aget()) or not provider.serves(model):
        return None  # disabled, changed in the admin, or not for this model: route afresh
    return Plan([Route(provider, provider.upstream_model(model), None)], session_provider=provider.id)
