"""A turn's routes in order with failover, and the upstream transport of each route: an upstream WebSocket
with its HTTP fallback before the first event, or HTTP (``proxy.turn.upstream``).

``proxy.turn.Turn`` drives these; a WebSocket lane gives them its upstream sockets through ``SocketSource``.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from django.conf import settings

from providers import health
from providers.routing import Plan, Route
from proxy.common.record import TurnRecord
from proxy.common.transport import Decision, FallbackReason, Transport, choose
from proxy.common.wire import WireError
from proxy.turn.upstream import ProviderFailure, Relay, all_failed
from proxy.upstream.websocket import (
    NO_WEBSOCKET_STATUSES,
    HandshakeFailed,
    UpstreamSocket,
    known_unsupported,
    remember_unsupported,
)
from proxy.usage import tracing

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
    raise all_failed(last)


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

    async def open_http(self, route: Route, record: TurnRecord) -> Relay | None:
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
) -> SocketTurn | Relay | None:
    """A WebSocket client's turn: per route, its upstream socket or, where that is not possible before
    the first event, upstream HTTP."""

    async def attempt(route: Route) -> SocketTurn | Relay | None:
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
