"""One client WebSocket connection: its turns, in order, over at most one upstream WebSocket.

The session keeps what the service's connection-local cache keeps (the last response, with the full input
that produced it and its output), so a ``previous_response_id`` continuation with ``store: false`` works
whichever transport the next turn takes upstream.
"""

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from providers import health, routing
from providers.registry import ProviderInfo, enabled_providers
from providers.routing import Affinity, Plan, Route
from proxy import logwriter, pipeline
from proxy.auth import Client
from proxy.logwriter import TurnRecord
from proxy.transport import Decision, FallbackReason, Transport, choose
from proxy.upstream_http import TransportError
from proxy.upstream_ws import (
    NO_WEBSOCKET_STATUSES,
    HandshakeFailed,
    UpstreamSocket,
    known_unsupported,
    public_url,
    remember_unsupported,
)
from proxy.wire import TERMINAL_TYPES, WireError, event_type, parse_body, validate_create_frame
from settings_app.runtime import system_settings

log = logging.getLogger("sluice.ws")

SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


class _FallBack(Exception):
    """The upstream WebSocket failed before its first event: this turn may go over HTTP instead."""

    def __init__(self, reason: FallbackReason) -> None:
        self.reason = reason


class Deadline:
    """How long the upstream may stay silent, re-armed lazily: an event only records the new limit, and
    the timer re-schedules itself when it fires early (an ``asyncio.timeout`` per event costs a timer
    handle each). On expiry the current task is cancelled and ``expired`` tells why."""

    def __init__(self, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.limit = self.loop.time() + seconds
        self.expired = False
        self.handle = self.loop.call_at(self.limit, self._check)

    def extend(self, seconds: float) -> None:
        self.limit = self.loop.time() + seconds

    def _check(self) -> None:
        if self.loop.time() >= self.limit:
            self.expired = True
            if self.task is not None:
                self.task.cancel()
        else:
            self.handle = self.loop.call_at(self.limit, self._check)

    def cancel(self) -> None:
        self.handle.cancel()
        if self.expired and self.task is not None:
            self.task.uncancel()


@dataclass
class Turn:
    """One response.create as the session runs it."""

    frame: dict[str, Any]
    text: str  # the frame as received, relayed untouched when nothing in it changes
    model: str
    full_input: list[Any] | None  # the whole conversation so far, when the connection knows it
    continues_last: bool  # previous_response_id names this connection's last response
    previous: str | None
    record: TurnRecord
    affinity: Affinity


def as_items(value: Any) -> list[Any]:
    """``input`` as a list of items (a bare string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else [value]


class Session:
    def __init__(
        self,
        client: Client,
        headers: dict[str, str],
        send_text: SendText,
        close: Close,
        *,
        forced_transport: str | None = None,
        pinned: ProviderInfo | None = None,
    ) -> None:
        self.client = client
        self.headers = headers
        self.send_text = send_text
        self.close_client = close
        self.forced_transport = forced_transport
        self.pinned = pinned  # the provider test: this provider only, whatever routing would say
        self.opened_at = time.monotonic()
        self.last_activity = self.opened_at
        self.frames_seen = 0
        self.pending: deque[str] = deque()  # turns waiting behind the running one
        self.upstream: UpstreamSocket | None = None
        # The connection-local cache: the last response and what produced it.
        self.last_response_id: str | None = None
        self.last_input: list[Any] | None = None
        self.last_output: list[Any] = []
        self.last_socket: UpstreamSocket | None = None
        self.records: list[TurnRecord] = []  # kept only when a caller (the provider test) asks for them
        self.keep_records = False
        # An idle connection costs no task: the worker exists while turns are queued, the deadline check
        # is a timer handle.
        self._worker: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(
            min(settings.SLUICE_WS_FIRST_FRAME_TIMEOUT, settings.SLUICE_WS_IDLE_TIMEOUT), self._check_deadline
        )

    # ----- lifecycle -----

    @property
    def busy(self) -> bool:
        return self._worker is not None

    async def receive(self, text: str) -> None:
        self.frames_seen += 1
        self.last_activity = time.monotonic()
        if len(text) > settings.SLUICE_WS_MAX_FRAME_BYTES:
            await self.close_client(1009, "frame too large")
            return
        if self._worker is None:
            self.pending.append(text)
            self._worker = asyncio.ensure_future(self._drain())
        elif len(self.pending) < settings.SLUICE_WS_QUEUE_LIMIT:
            self.pending.append(text)
        else:
            error = WireError(
                429,
                "too_many_queued_requests",
                f"At most {settings.SLUICE_WS_QUEUE_LIMIT} turns may wait on a connection.",
            )
            record = TurnRecord(key_id=self.client.key_id, client_transport="websocket")
            record.status, record.error_code = error.status, error.code
            self._submit(record)
            await self.send_error(error)

    async def shutdown(self) -> None:
        self._timer.cancel()
        for task in (self._worker, self._closing):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self.pending.clear()
        await self._drop_upstream()

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

    async def _drain(self) -> None:
        try:
            while self.pending:
                text = self.pending.popleft()
                try:
                    await self.turn(text)
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
                    self.last_activity = time.monotonic()
        finally:
            self._worker = None

    async def send_error(self, error: WireError) -> None:
        await self.send_text(error.ws_frame())

    async def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await upstream.close()

    # ----- one turn -----

    async def turn(self, text: str) -> None:
        record = TurnRecord(
            key_id=self.client.key_id,
            client_transport="websocket",
            endpoint="provider_test" if self.pinned is not None else "responses",
        )
        try:
            frame = parse_body(text)
            model = validate_create_frame(frame)
            record.requested_model = model
            if time.monotonic() - self.opened_at > settings.SLUICE_WS_MAX_AGE:
                minutes = int(settings.SLUICE_WS_MAX_AGE // 60)
                raise WireError(
                    400,
                    "websocket_connection_limit_reached",
                    f"Responses websocket connection limit reached ({minutes} minutes). "
                    "Create a new websocket connection to continue.",
                )
            await self._turn(frame, text, model, record)
        except WireError as error:
            log.info("WebSocket turn refused: %s %s", error.code, error.message)
            record.status, record.error_code = error.status, error.code
            if error.code != "invalid_json":
                self._evict()
            await self.send_error(error)
            self._submit(record)  # every refused turn leaves a row, also one without a model
        except asyncio.CancelledError:
            record.status, record.error_code = 499, "client_disconnected"
            self._submit(record)
            raise

    def _submit(self, record: TurnRecord) -> None:
        if self.keep_records:
            self.records.append(record)
        logwriter.submit(record)

    def _evict(self) -> None:
        self.last_response_id = None
        self.last_input = None
        self.last_output = []
        self.last_socket = None

    async def _turn(self, frame: dict[str, Any], text: str, model: str, record: TurnRecord) -> None:
        previous = frame.get("previous_response_id") or None
        continues_last = previous is not None and previous == self.last_response_id
        if previous is not None and not continues_last and frame.get("store") is False:
            raise WireError(
                400,
                "previous_response_not_found",
                f"Previous response with id '{previous}' not found.",
                "previous_response_id",
            )
        new_items = as_items(frame.get("input"))
        if previous is None:
            full_input: list[Any] | None = new_items
        elif continues_last and self.last_input is not None:
            full_input = [*self.last_input, *self.last_output, *new_items]
        else:
            full_input = None  # continues a response stored upstream; only the upstream knows its input
        record.session_id = routing.session_of(frame, self.headers)
        record.stored = frame.get("store") is not False
        affinity = routing.affinity_for(self.client.key_id, previous, record.session_id)
        runtime = await system_settings.aget()
        turn = Turn(frame, text, model, full_input, continues_last, previous, record, affinity)
        last: WireError | None = None
        live = await self._live_plan(model, runtime.upstream_websockets)
        if live is not None:
            # The live upstream socket holds the connection-local cache: the turn stays on it, with no
            # routing look-up; only if it fails do the other providers come into play.
            done, last = await self._attempt(live, runtime.upstream_websockets, turn)
            if done:
                return
            if self.pinned is not None:  # the provider test tries its provider only
                raise pipeline.all_failed(last)
        plan = await routing.plan(model, affinity)
        routes = [r for r in plan.routes if live is None or r.provider.id != live.routes[0].provider.id]
        if not routes and live is None:
            raise WireError(
                404, "model_not_found", f"The model '{model}' is not served by this gateway.", "model"
            )
        done, failed = await self._attempt(
            Plan(routes, plan.session_provider), runtime.upstream_websockets, turn
        )
        if not done:
            raise pipeline.all_failed(failed or last)

    async def _live_plan(self, model: str, upstream_websockets: bool) -> Plan | None:
        upstream = self.upstream
        if self.pinned is not None:
            return Plan([Route(self.pinned, self.pinned.upstream_model(model), None)], None)
        if upstream is None or not upstream.is_open or not upstream_websockets:
            return None
        provider = upstream.provider
        if provider not in (await enabled_providers.aget()) or not provider.serves(model):
            return None  # disabled, changed in the admin, or not for this model: route afresh
        return Plan([Route(provider, provider.upstream_model(model), None)], session_provider=provider.id)

    async def _attempt(
        self, plan: Plan, upstream_websockets: bool, turn: Turn
    ) -> tuple[bool, WireError | None]:
        """Try the plan's routes in order; True once one served the turn (or failed it after its first
        event), else False with the last provider failure."""
        record = turn.record
        last: WireError | None = None
        for route in plan.routes:
            record.provider_id = route.provider.id
            record.upstream_model = route.upstream_model
            record.fallback_reason = ""
            decision = await self._decide(route, upstream_websockets)
            if decision.transport == Transport.WEBSOCKET:
                try:
                    if await self._over_websocket(route, turn, plan):
                        return True, None
                    last = WireError(
                        504, "upstream_timeout", "The upstream did not answer in time.", None, "server_error"
                    )
                    continue  # provider failure: next route
                except _FallBack as fallback:
                    if not decision.may_fall_back:
                        last = WireError(
                            502,
                            "upstream_unavailable",
                            "The upstream WebSocket failed.",  # which provider: the log says
                            None,
                            "server_error",
                        )
                        await health.record_failure(route.provider.id)
                        continue
                    record.fallback_reason = fallback.reason.value
            else:
                record.fallback_reason = decision.reason.value if decision.reason else ""
            try:
                await self._over_http(route, turn, plan)
                return True, None
            except pipeline.ProvidersFailed as failed:
                last = failed
        return False, last

    async def _decide(self, route: Route, upstream_websockets: bool) -> Decision:
        provider = route.provider
        reusable = self.upstream is not None and self.upstream.provider == provider and self.upstream.is_open
        unsupported = False
        if not reusable and upstream_websockets and provider.websocket_mode == "auto":
            unsupported = await known_unsupported(provider.id)
        return choose(
            upstream_websockets=upstream_websockets,
            provider_mode=provider.websocket_mode,
            known_unsupported=unsupported,
            forced=self.forced_transport,
        )

    async def _socket_for(self, route: Route, record: TurnRecord) -> UpstreamSocket:
        provider = route.provider
        upstream = self.upstream
        if upstream is not None and upstream.provider == provider and upstream.is_open:
            return upstream
        await self._drop_upstream()
        record.upstream_ws_url = public_url(provider.websocket_url)
        try:
            upstream = await UpstreamSocket.open(
                provider,
                self.headers,
                min(provider.connect_timeout, settings.SLUICE_UPSTREAM_WS_HANDSHAKE_TIMEOUT),
            )
        except HandshakeFailed as failed:
            log.info("provider %s: WebSocket %s", provider.name, failed.detail)
            if failed.status in NO_WEBSOCKET_STATUSES:
                await remember_unsupported(provider.id, settings.SLUICE_WS_UNSUPPORTED_TTL)
            raise _FallBack(failed.reason) from None
        record.ws_handshake_ms = upstream.handshake_ms
        self.upstream = upstream
        return upstream

    async def _over_websocket(self, route: Route, turn: Turn, plan: Plan) -> bool:
        """Run the turn on the upstream socket. Returns False when the provider failed (try the next one);
        raises _FallBack when HTTP may take over; after the first event the turn ends here, whatever
        happens."""
        frame, text, record, full_input = turn.frame, turn.text, turn.record, turn.full_input
        upstream = await self._socket_for(route, record)
        record.upstream_transport = Transport.WEBSOCKET.value
        record.upstream_ws_url = upstream.url
        changes: dict[str, Any] = {}
        if route.upstream_model != turn.model:
            changes["model"] = route.upstream_model
        if turn.continues_last and self.last_socket is not upstream:
            # The upstream socket that holds the previous response is gone: send the whole conversation.
            if full_input is None:
                raise WireError(
                    400,
                    "previous_response_not_found",
                    f"Previous response with id '{frame.get('previous_response_id')}' not found.",
                    "previous_response_id",
                )
            changes["input"] = full_input
            changes["previous_response_id"] = None
        if changes:
            payload = {k: v for k, v in {**frame, **changes}.items() if v is not None or k not in changes}
            text = json.dumps(payload)
        connection = upstream.connection
        provider = route.provider
        first = True
        silence = Deadline(provider.first_byte_timeout)
        try:
            try:
                await connection.send(text)
                while True:
                    data = await connection.recv(decode=True)
                    silence.extend(provider.idle_timeout)
                    if isinstance(data, bytes):
                        data = data.decode()
                    kind = event_type(data)
                    terminal = kind in TERMINAL_TYPES
                    if first:
                        record.first_event()
                        first = False
                    if terminal:
                        await self._terminal(kind, data, route, turn, plan, upstream)
                    await self.send_text(data)
                    if terminal:
                        self._submit(record)
                        return True
            finally:
                silence.cancel()
        except asyncio.CancelledError:
            if not silence.expired:
                await self._drop_upstream()
                raise
            exc: BaseException = TimeoutError()
            return await self._upstream_failed(route, record, first, exc)
        except Exception as exc:  # noqa: BLE001 - every upstream failure ends in the same two ways
            return await self._upstream_failed(route, record, first, exc)

    async def _upstream_failed(
        self, route: Route, record: TurnRecord, first: bool, exc: BaseException
    ) -> bool:
        """Before the first event: HTTP may take over (or, on a timeout, the next provider); after it, the
        client gets an error frame and the turn ends."""
        provider = route.provider
        await self._drop_upstream()
        if first:
            log.info("provider %s: WebSocket failed before the first event: %r", provider.name, exc)
            if isinstance(exc, TimeoutError):
                await health.record_failure(provider.id)
                record.error_code = "upstream_timeout"
                return False
            raise _FallBack(FallbackReason.CLOSED_BEFORE_FIRST_EVENT) from None
        log.warning("provider %s: WebSocket broke mid-turn: %r", provider.name, exc)
        await self._broke_mid_turn(record)
        return True

    async def _broke_mid_turn(self, record: TurnRecord) -> None:
        """After the first event there is no fallback and no replay: the client gets an error frame."""
        error = WireError(
            502, "upstream_stream_error", "The upstream broke off during the response.", None, "server_error"
        )
        record.status, record.error_code = 502, error.code
        self._evict()
        await self.send_error(error)
        self._submit(record)

    async def _over_http(self, route: Route, turn: Turn, plan: Plan) -> None:
        frame, record, full_input = turn.frame, turn.record, turn.full_input
        record.upstream_transport = Transport.HTTP.value
        if frame.get("generate") is False:
            await self._local_warmup(frame, turn.model, full_input, record)
            return
        body = {k: v for k, v in frame.items() if k not in ("type", "generate", "stream_id")}
        body["model"] = route.upstream_model
        body["stream"] = True
        if turn.continues_last and full_input is not None:
            body["input"] = full_input
            body.pop("previous_response_id", None)
        raw = json.dumps(body).encode()
        single = Plan(routes=[route], session_provider=plan.session_provider)
        relay = await pipeline.open_with_failover(
            single,
            method="POST",
            path="/responses",
            model=None,
            raw=raw,
            body=None,
            headers=self.headers,
            record=record,
        )
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
                for event in batch:
                    terminal = event.type in TERMINAL_TYPES
                    if terminal:
                        await self._terminal(event.type, event.data, route, turn, plan, None)
                    await self.send_text(event.data)
                    if terminal:
                        self._submit(record)
                        await relay.opened.finish(relay.batches)
                        return
                batch = await anext(relay.batches)  # type: ignore[arg-type]
        except (StopAsyncIteration, *TransportError) as exc:
            log.warning("provider %s: HTTP stream broke mid-turn: %r", route.provider.name, exc)
            await self._broke_mid_turn(record)
        finally:
            await relay.opened.close()

    async def _terminal(
        self, kind: str, data: str, route: Route, turn: Turn, plan: Plan, socket: UpstreamSocket | None
    ) -> None:
        """Read usage from the terminal event and do the bookkeeping before the client sees it."""
        record = turn.record
        record.outcome.read_terminal(kind, data)
        if kind == "error":
            record.status = _error_status(data)
        await self._finish(
            record, route, turn.affinity, plan, turn.full_input, socket, ok=kind == "response.completed"
        )

    async def _finish(
        self,
        record: TurnRecord,
        route: Route,
        affinity: Affinity,
        plan: Plan,
        full_input: list[Any] | None,
        socket: UpstreamSocket | None,
        ok: bool,
    ) -> None:
        """Before the terminal event reaches the client: update the connection-local cache and affinity."""
        if ok and record.outcome.response_id:
            self.last_response_id = record.outcome.response_id
            self.last_input = full_input
            self.last_output = record.outcome.output
            self.last_socket = socket
        else:
            self._evict()
        if record.status >= 400:
            return
        await pipeline.finish(record, route, affinity, plan)

    async def _local_warmup(
        self, frame: dict[str, Any], model: str, full_input: list[Any] | None, record: TurnRecord
    ) -> None:
        """``generate: false`` with no upstream socket: answer as the service does, and keep the input so
        the next turn can chain from this id."""
        response_id = "resp_" + secrets.token_hex(24)
        response: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": model,
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
        await self.send_text(
            json.dumps({"type": "response.created", "sequence_number": 0, "response": response})
        )
        response = {
            **response,
            "status": "completed",
            "usage": {
                "input_tokens": 0,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 0,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 0,
            },
        }
        record.upstream_transport = ""
        record.outcome.response_id = response_id
        self.last_response_id = response_id
        self.last_input = full_input
        self.last_output = []
        self.last_socket = None
        await self.send_text(
            json.dumps({"type": "response.completed", "sequence_number": 1, "response": response})
        )
        self._submit(record)


def _error_status(data: str) -> int:
    try:
        status = json.loads(data).get("status")
    except (ValueError, AttributeError):
        return 502
    return status if isinstance(status, int) and status >= 400 else 502
