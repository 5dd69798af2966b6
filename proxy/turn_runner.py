"""The turn runner both ingresses call: routes in order with failover, the upstream transport of each
route (an upstream WebSocket with its HTTP fallback, or HTTP), and the bookkeeping once the turn ends.

The caller owns what is per connection or per request: the HTTP view relays a ``Relay``; a WebSocket lane
relays a ``Relay`` or a ``SocketTurn`` and gives the runner its upstream sockets through ``SocketSource``.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from django.conf import settings

from providers import health
from providers.routing import Plan, Route
from proxy import limits, logwriter, pipeline, tracing
from proxy.auth import Client
from proxy.pipeline import ProviderFailure
from proxy.record import TurnRecord
from proxy.transport import Decision, FallbackReason, Transport, choose
from proxy.upstream_ws import (
    NO_WEBSOCKET_STATUSES,
    HandshakeFailed,
    UpstreamSocket,
    known_unsupported,
    remember_unsupported,
)
from proxy.wire import WireError

log = logging.getLogger("sluice.turn")

T = TypeVar("T")


class FallBack(Exception):
    """The upstream WebSocket failed before its first event: this turn may go over HTTP instead."""

    def __init__(self, reason: FallbackReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


async def first_route(
    plan: Plan,
    record: TurnRecord,
    open_route: Callable[[Route], Awaitable[T]],
    client_gone: Callable[[], bool] = lambda: False,
) -> T:
    """Try the plan's routes in order until one opens; a provider failure moves on (and counts against
    the provider's breaker, unless the client left meanwhile: closing its connection closes the upstream
    socket the turn waited on), any other ``WireError`` ends the turn."""
    last: WireError | None = None
    for route in plan.routes:
        record.provider_id = route.provider.id
        record.upstream_model = route.upstream_model
        record.fallback_reason = ""
        try:
            with tracing.attempt(record, route.provider.name, route.upstream_model):
                return await open_route(route)
        except ProviderFailure as failure:
            last = failure.error
            if client_gone():
                raise asyncio.CancelledError() from None
            log.warning("provider %s failed before the first event: %s", route.provider.name, last.message)
            await health.record_failure(route.provider.id)
    raise pipeline.all_failed(last)


@dataclass
class HttpCall:
    """What an upstream HTTP request of this turn sends."""

    method: str
    path: str
    model: str | None
    raw: bytes | None
    body: dict[str, Any] | None
    headers: Mapping[str, str]
    query: str = ""
    read_first_event: bool = True


async def open_http(plan: Plan, record: TurnRecord, call: HttpCall) -> pipeline.Relay:
    """The HTTP view's turn: the routes in order over upstream HTTP."""
    return await first_route(plan, record, lambda route: pipeline.open_route(route, record, call))


@dataclass
class SocketTurn:
    """A turn running on an upstream socket: its first event already read."""

    route: Route
    socket: UpstreamSocket
    first: str


class SocketSource(Protocol):
    """What a WebSocket lane gives the runner: its upstream sockets and the payload for a route."""

    forced_transport: str | None

    @property
    def client_gone(self) -> bool: ...

    def reusable(self, route: Route) -> bool: ...

    async def socket_for(self, route: Route, record: TurnRecord) -> UpstreamSocket: ...

    async def run_on_socket(
        self, route: Route, socket: UpstreamSocket, record: TurnRecord
    ) -> tuple[UpstreamSocket, str]:
        """Send the turn and read its first event (on a fresh socket when the upstream retired this
        one); raises FallBack, ProviderFailure or WireError."""
        ...

    async def open_http(self, route: Route, record: TurnRecord) -> pipeline.Relay | None:
        """The turn over upstream HTTP on this route (None: answered without the upstream)."""
        ...


async def decide(source: SocketSource, route: Route, upstream_websockets: bool) -> Decision:
    provider = route.provider
    unsupported = False
    if not source.reusable(route) and upstream_websockets and provider.websocket_mode == "auto":
        unsupported = await known_unsupported(provider.id)
    return choose(
        upstream_websockets=upstream_websockets,
        provider_mode=provider.websocket_mode,
        known_unsupported=unsupported,
        forced=source.forced_transport,
    )


async def open_socket(provider_route: Route, source: SocketSource, record: TurnRecord) -> UpstreamSocket:
    try:
        return await source.socket_for(provider_route, record)
    except HandshakeFailed as failed:
        provider = provider_route.provider
        log.info("provider %s: WebSocket %s", provider.name, failed.detail)
        if failed.status in NO_WEBSOCKET_STATUSES:
            await remember_unsupported(provider.id, settings.SLUICE_WS_UNSUPPORTED_TTL)
        raise FallBack(failed.reason) from None


async def open_for_lane(
    plan: Plan, record: TurnRecord, source: SocketSource, upstream_websockets: bool
) -> SocketTurn | pipeline.Relay | None:
    """A WebSocket client's turn: per route, its upstream socket or, where that is not possible before
    the first event, upstream HTTP."""

    async def attempt(route: Route) -> SocketTurn | pipeline.Relay | None:
        decision = await decide(source, route, upstream_websockets)
        if decision.transport == Transport.WEBSOCKET:
            try:
                socket = await open_socket(route, source, record)
                socket, first = await source.run_on_socket(route, socket, record)
                return SocketTurn(route, socket, first)
            except FallBack as fallback:
                if not decision.may_fall_back:
                    raise ProviderFailure(
                        WireError(
                            502,
                            "upstream_unavailable",
                            "The upstream WebSocket failed.",  # which provider: the log says
                            None,
                            "server_error",
                        )
                    ) from None
                record.fallback_reason = fallback.reason.value
        else:
            record.fallback_reason = decision.reason.value if decision.reason else ""
        return await source.open_http(route, record)

    return await first_route(plan, record, attempt, lambda: source.client_gone)


@asynccontextmanager
async def admitted(
    client: Client, record: TurnRecord, guess: tuple[int, int] = (0, 0)
) -> AsyncIterator[None]:
    """One turn's admission, released on every exit path, whatever the ingress and the lane: the place
    where per-key limits are taken and given back (with ``guess``, the turn's estimated tokens, reserved
    against its budgets until then). Refusals are ``WireError``s."""
    with tracing.child(record, "admission"):
        admission = await limits.admit(client, record.requested_model or None, limits.TURN, guess)
    try:
        yield
    finally:
        admission.release(record)  # with the usage the terminal event left in the record


def submit(record: TurnRecord, kept: list[TurnRecord] | None = None) -> None:
    """The turn's one request-log row (and a copy for a caller that keeps them, the provider test)."""
    if kept is not None:
        kept.append(record)
    logwriter.submit(record)
