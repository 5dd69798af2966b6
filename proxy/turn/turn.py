"""One turn, from admission to its request-log row, whichever ingress drives it.

The HTTP view (``proxy.http.views`` with ``proxy.http.relay``) and a WebSocket lane (``proxy.ws.lane`` with
``proxy.ws.relay``) are adapters: they read what the client sent, and turn what the Turn relays into SSE
bytes or WebSocket frames. What a turn does for the gateway happens here, the same way on both:

- admission and its release (``admit``; ``close`` gives back what it took, on every exit path);
- whose response a turn may continue or read (``require_owner``);
- the routing step (``routes``) and the failover loop with the upstream transport (``open_http``,
  ``open_for_lane``; ``proxy.turn.failover``);
- each relayed event's bookkeeping: secrets scrubbed (``scrub``), the response's owner recorded
  (``created``), and the terminal event's outcome, status, breaker and affinity (``end``);
- one refusal path (``refuse``, and ``Turn.refusal`` for a request refused before its turn began);
- one row in the request log (``submit``), with the status of the way the turn ended.
"""

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from providers import health, routing
from providers.routing import Affinity, Plan, Route
from proxy.common.outcome import terminal_status
from proxy.common.record import TurnRecord
from proxy.common.scrubbing import scrub_event, scrubbed_sse
from proxy.common.wire import Event, WireError
from proxy.governance import limits, ownership
from proxy.governance.auth import Client
from proxy.turn import failover
from proxy.turn.upstream import HttpCall, Relay, open_route
from proxy.upstream.http import Opened
from proxy.usage import logwriter, tracing

log = logging.getLogger("sluice.refusals")

T = TypeVar("T")

NO_PROVIDER = WireError(503, "no_provider", "No upstream provider is enabled.", None, "server_error")


def client_address(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def no_route(model: str | None) -> WireError:
    if not model:
        return WireError(NO_PROVIDER.status, NO_PROVIDER.code, NO_PROVIDER.message, None, NO_PROVIDER.type)
    return WireError(404, "model_not_found", f"The model '{model}' is not served by this gateway.", "model")


class Turn:
    """One turn of one client: what it asked for, what it was admitted with, where it went, how it ended."""

    def __init__(
        self,
        client: Client | None,
        transport: str,
        endpoint: str = "responses",
        *,
        parent: Mapping[str, str] | None = None,
        link: Any = None,
        kept: list[TurnRecord] | None = None,
        client_addr: str = "",
        scope: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.scope = scope  # the request's, read only for a refusal's log line
        self.record = TurnRecord(
            key_id=client.key_id if client is not None else None,
            team_id=client.team_id if client is not None else None,
            client_transport=transport,
            endpoint=endpoint,
            owner_id=client.owner_id if client is not None else None,
            client_addr=client_addr,
        )
        self.admission: limits.Admission = limits.UNLIMITED
        self.affinity: Affinity | None = None
        self.plan: Plan | None = None
        self.route: Route | None = None  # the route that opened
        self.opened: Opened | None = None  # its upstream HTTP answer, closed with the turn
        self.kept = kept  # a caller that keeps the records (the provider test)
        self.ended = False  # the terminal event was read
        if tracing.ENABLED:
            key_name = client.key_name if client is not None else ""
            tracing.start_turn(self.record, parent, key_name=key_name, link=link)

    @classmethod
    def refusal(
        cls,
        error: WireError,
        *,
        scope: Mapping[str, Any],
        client: Client | None,
        transport: str,
        endpoint: str,
    ) -> WireError:
        """A request refused before its turn began (no key, a wrong method, a body too large, an upgrade
        refused): its row, recorded like every other refusal; returns the error for raising."""
        parent = None
        if tracing.ENABLED:
            parent = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        turn = cls(client, transport, endpoint, parent=parent, client_addr=client_address(scope), scope=scope)
        return turn.refuse(error)

    # ----- what the client asked for -----

    def ask(self, model: str | None, request: Mapping[str, Any] | None, headers: Mapping[str, str]) -> None:
        """The turn's model and request (a body or a ``response.create`` frame), as the row records them."""
        record = self.record
        if model:
            record.requested_model = model[:200]
            tracing.set_model(record, model)
        if request is not None:
            record.stored = request.get("store") is not False
        record.session_id = routing.session_of(request, headers)

    async def admit(self, counts: int, guess: tuple[int, int] = (0, 0)) -> None:
        """Take the key's limits for this turn (``limits.TURN``) or request (``limits.REQUEST``); a refusal
        is a ``WireError``. ``close`` gives back what was taken."""
        assert self.client is not None
        with tracing.child(self.record, "admission"):
            self.admission = await limits.admit(
                self.client, self.record.requested_model or None, counts, guess
            )

    async def require_owner(self, response_id: object, *, previous: bool) -> None:
        """Another's response, or one never made here, is refused as if it did not exist."""
        await ownership.require(self.client, response_id, previous=previous)

    # ----- where it goes -----

    async def routes(self, model: str | None, affinity: Affinity) -> Plan:
        """The routing step: the providers that may serve ``model``, in order; none is a refusal."""
        self.affinity = affinity
        plan = await routing.plan(model, affinity)
        if not plan.routes:
            raise no_route(model)
        return plan

    async def open_http(self, plan: Plan, call: HttpCall) -> Relay:
        """The turn over upstream HTTP, the plan's routes in order."""
        self.plan = plan
        relay = await failover.first_route(
            plan, self.record, lambda route: open_route(route, self.record, call)
        )
        self.route, self.opened = relay.route, relay.opened
        return relay

    async def open_for_lane(
        self, plan: Plan, source: failover.SocketSource, upstream_websockets: bool
    ) -> failover.SocketTurn | Relay | None:
        """A WebSocket lane's turn: per route, an upstream socket or, before its first event, HTTP."""
        self.plan = plan
        opened = await failover.open_for_lane(plan, self.record, source, upstream_websockets)
        if opened is not None:
            self.route = opened.route
            if isinstance(opened, Relay):
                self.opened = opened.opened
        return opened

    # ----- what it relays -----

    def scrub(self, data: str) -> str:
        """An error or failed event's text without the provider's key (``scrubbing.SCRUBBED_EVENTS``)."""
        return scrub_event(data, self.route.provider.api_key if self.route is not None else "")

    def scrub_sse(self, event: Event) -> Event:
        return scrubbed_sse(event, self.route.provider.api_key if self.route is not None else "")

    async def created(self, response_id: str) -> None:
        """The response this turn made: whose it is, recorded before anyone may use its id."""
        await ownership.claim(self.record, response_id)

    async def end(self, kind: str, data: str) -> None:
        """The terminal event, read before the client sees it: its outcome and status (one rule for both
        transports, ``outcome.terminal_status``), then the bookkeeping (``finish``)."""
        record = self.record
        record.outcome.read_terminal(kind, data)
        record.status = terminal_status(kind, data, record.outcome)
        await self.finish()

    async def finish(self) -> None:
        """Bookkeeping once the turn's answer is known, for every way it ends: the response's owner, the
        provider's health, and the affinity of the response id and the session."""
        self.ended = True
        route, record = self.route, self.record
        if route is None:
            return
        await ownership.claim(record, record.outcome.response_id)
        if record.status < 400:
            await health.record_success(route.provider.id, route.breaker_state)
        # A response with store: false cannot be continued or fetched through another connection: no pin.
        response_id = record.outcome.response_id if record.stored else None
        if self.affinity is not None:
            await routing.remember(
                route.provider.id,
                response_id or None,
                self.affinity,
                self.plan.session_provider if self.plan else None,
            )

    # ----- how it ended -----

    def refuse(self, error: WireError) -> WireError:
        """The turn's answer is ``error`` (a refusal, or the upstream's own error before anything was
        relayed): logged once, one row; returns the error for the adapter to send in its protocol."""
        record = self.record
        log.info(
            "refused %s (%s, %s): %s %s: %s",
            self.where(),
            record.client_transport,
            record.endpoint,
            error.status,
            error.code,
            error.message,
        )
        record.status, record.error_code = error.status, error.code
        self.submit()
        error.recorded = True  # type: ignore[attr-defined]
        return error

    def where(self) -> str:
        """Where a refused request came from, for its log line: its method, path and address, or the key."""
        if self.scope is not None:
            scope = self.scope
            address = client_address(scope) or "?"
            return f"{scope.get('method', 'WEBSOCKET')} {scope.get('path', '')} from {address}"
        return f"a turn of key {self.client.key_name}" if self.client is not None else "a turn"

    def broke(self, code: str, status: int = 502) -> None:
        """The upstream broke off, or sent an answer cut short, after the client's answer began."""
        self.record.status, self.record.error_code = status, code

    def gone(self) -> None:
        """The client left before the turn's answer reached it."""
        self.record.status, self.record.error_code = 499, "client_disconnected"

    def submit(self) -> None:
        """The turn's one request-log row (the first exit path to get here writes it)."""
        if self.record.submitted:
            return
        if self.kept is not None:
            self.kept.append(self.record)
        logwriter.submit(self.record)

    async def close(self) -> None:
        """Every exit path ends here: an upstream answer not relayed to its end is closed, a turn whose
        client left without its row gets one (499), and what admission took is given back with the
        usage the terminal event left in the record."""
        try:
            if self.opened is not None:
                opened, self.opened = self.opened, None
                await opened.close()
            if not self.record.submitted:
                if not self.ended:
                    self.gone()
                self.submit()
        finally:
            self.admission.release(self.record)


async def run_guarded(turn: Turn, step: Callable[[], Awaitable[T]]) -> T:
    """``step`` of ``turn``; a ``WireError`` it raises is the turn's refusal (recorded once)."""
    try:
        return await step()
    except WireError as error:
        if getattr(error, "recorded", False):
            raise
        raise turn.refuse(error) from None
