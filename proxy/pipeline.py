"""The turn pipeline shared by both ingresses: routing with failover over upstream HTTP, and relaying."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from providers import health, routing
from providers.routing import Affinity, Plan, Route
from proxy import logwriter, ownership
from proxy.outcome import INVALID, NOT_KEPT, scan_json_response, terminal_status
from proxy.record import TurnRecord
from proxy.scrubbing import SCRUBBED_EVENTS, BodyScrubber, scrub, scrub_value, scrubbed_sse
from proxy.upstream_http import Opened, TransportError, open_request
from proxy.wire import TERMINAL_TYPES, Event, WireError

log = logging.getLogger("sluice.pipeline")


def is_provider_failure(status: int) -> bool:
    """Statuses that say the provider (not the request) is at fault: try the next provider.

    401/403 from an upstream mean the gateway's own provider key is wrong; the client's key is fine and
    the next provider may well serve it."""
    return status >= 500 or status in (401, 403, 408, 429)


def upstream_error(status: int, body: bytes, provider_key: str) -> WireError:
    """The upstream's own error, as the client should see it, with secrets removed from every field."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    error = scrub_value(error, provider_key)
    message = str(error.get("message") or scrub(body[:500].decode(errors="replace"), provider_key))
    return WireError(
        status,
        str(error.get("code") or ("rate_limit_exceeded" if status == 429 else "upstream_error")),
        message or "Upstream error.",
        error.get("param"),
        str(error.get("type") or ("invalid_request_error" if status < 500 else "server_error")),
    )


class ProviderFailure(Exception):
    """This route failed on the provider's side before the client saw anything: try the next one."""

    def __init__(self, error: WireError) -> None:
        super().__init__(error.message)
        self.error = error


def timeout_error(route: Route) -> WireError:
    return WireError(
        504,
        "upstream_timeout",
        "The upstream did not answer in time.",  # the provider's name: in the log, not to clients
        None,
        "server_error",
    )


class ProvidersFailed(WireError):
    """Every provider tried failed on its side; the status is what the client should act on."""


def all_failed(last: WireError | None) -> ProvidersFailed:
    if isinstance(last, ProvidersFailed):
        return last
    if last is not None and (last.status == 429 or last.code == "upstream_timeout"):
        return ProvidersFailed(last.status, last.code, last.message, last.param, last.type)
    detail = f" Last error: {last.message}" if last is not None else ""
    return ProvidersFailed(
        502,
        "upstream_unavailable",
        "No upstream provider could serve the request." + detail,
        None,
        "server_error",
    )


@dataclass
class Relay:
    """An upstream answer the client will receive, opened on one route."""

    route: Route
    opened: Opened
    batches: AsyncIterator[list[Event]] | None  # SSE: the rest of the events, the first batch already read
    first: list[Event] | None


def body_for(route: Route, model: str | None, raw: bytes | None, body: dict[str, Any] | None) -> bytes | None:
    """The request body for a route: the client's bytes untouched unless the model is redirected."""
    if body is None or not model or route.upstream_model == model:
        return raw
    return json.dumps({**body, "model": route.upstream_model}).encode()


async def open_route(route: Route, record: TurnRecord, call: Any) -> Relay:
    """Open one route over upstream HTTP. A provider failure raises ``ProviderFailure`` (the runner
    tries the next route); a refusal of the request itself raises the upstream's ``WireError``."""
    provider = route.provider
    record.upstream_transport = "http"
    opened: Opened | None = None
    try:
        async with asyncio.timeout(provider.connect_timeout + provider.first_byte_timeout):
            opened = await open_request(
                provider,
                call.method,
                call.path,
                body=body_for(route, call.model, call.raw, call.body),
                client_headers=call.headers,
                query=call.query,
            )
            if is_provider_failure(opened.status):
                error = upstream_error(opened.status, await opened.read_at_most(), provider.api_key)
                log.warning("provider %s answered %s; trying the next one", provider.name, opened.status)
                raise ProviderFailure(error)
            if opened.status >= 400:
                raise upstream_error(opened.status, await opened.read_at_most(), provider.api_key)
            is_sse = opened.content_type.startswith("text/event-stream")
            if not (is_sse and call.read_first_event):
                return Relay(route, opened, None, None)
            batches = opened.batches().__aiter__()
            first = await anext(batches)
            return Relay(route, opened, batches, first)
    except (WireError, ProviderFailure):
        raise
    except asyncio.CancelledError:
        if opened is not None:  # the client left while the first event was awaited
            await opened.close()
        raise
    except TimeoutError:
        last = timeout_error(route)
    except (*TransportError, StopAsyncIteration) as exc:
        log.warning("provider %s could not be reached: %r", provider.name, exc)
        last = WireError(
            502, "upstream_unavailable", "The upstream could not be reached.", None, "server_error"
        )
    if opened is not None:
        await opened.close()
    raise ProviderFailure(last)


async def finish(
    record: TurnRecord, relay_route: Route | None, affinity: Affinity, plan: Plan | None
) -> None:
    """Bookkeeping once a turn's terminal event is known, before the client sees it: affinity, health."""
    if relay_route is None:
        return
    provider_id = relay_route.provider.id
    await ownership.claim(record, record.outcome.response_id)
    if record.status < 400:
        await health.record_success(provider_id, relay_route.breaker_state)
    # A response with store: false cannot be continued or fetched through another connection: no pin.
    response_id = record.outcome.response_id if record.stored else None
    await routing.remember(
        provider_id, response_id or None, affinity, plan.session_provider if plan else None
    )


async def relay_sse(relay: Relay, record: TurnRecord, affinity: Affinity, plan: Plan) -> AsyncIterator[bytes]:
    """Relay SSE events untouched; the terminal event is parsed for usage before it is sent."""
    assert relay.first is not None and relay.batches is not None
    terminal = False
    sequence = 0
    try:
        record.first_event()
        batch = relay.first
        while True:
            out = []
            for event in batch:
                if event.type in SCRUBBED_EVENTS:
                    event = scrubbed_sse(event, relay.route.provider.api_key)
                elif event.type == "response.created" and not record.claimed:
                    await ownership.claim(record, ownership.created_id(event.data))
                out.append(event.as_sse())
                if event.type in TERMINAL_TYPES:
                    terminal = True
                    record.outcome.read_terminal(event.type, event.data)
                    record.status = terminal_status(event.type, event.data, record.outcome)
                    await finish(record, relay.route, affinity, plan)
                    break
            yield out[0] if len(out) == 1 else b"".join(out)
            sequence += len(out)
            if terminal:
                break
            batch = await anext(relay.batches)
    except StopAsyncIteration:
        pass
    except TransportError as exc:
        error = WireError(
            502,
            "upstream_stream_error",
            f"The upstream stream broke: {type(exc).__name__}.",
            None,
            "server_error",
        )
        record.status, record.error_code = 502, error.code
        log.warning("provider %s stream broke after %d events: %r", relay.route.provider.name, sequence, exc)
        yield error.sse_event(sequence)
        return
    except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: closed while the client was written to
        if not terminal:
            record.status, record.error_code = 499, "client_disconnected"
        raise
    finally:
        if terminal:
            await relay.opened.finish(relay.batches)
        else:
            await relay.opened.close()
        logwriter.submit(record)
    if not terminal:
        error = WireError(
            502,
            "upstream_stream_incomplete",
            "The upstream stream ended before the response finished.",
            None,
            "server_error",
        )
        record.status, record.error_code = 502, error.code
        yield error.sse_event(sequence)


class BodyBroken(Exception):
    """A relayed body broke after the client's response had started. The response must not end as if it
    were whole: the server closes the connection without the body's end (no last chunk), and clients see
    an incomplete message (httpx raises, the openai SDK retries) rather than half a JSON document."""


def whole_json(head: bytes, tail: bytes, kept: bytes | None) -> tuple[bool, Any]:
    """Whether a JSON body is whole, and its value when it was small enough to keep (else ``NOT_KEPT``).
    A bigger body is judged by its two ends, its first bracket and a closing one last: an upstream that
    ends a body cleanly but early (a wrong Content-Length) rarely cuts it just after a closing bracket."""
    if kept is not None:
        try:
            return True, json.loads(kept)
        except ValueError:
            return False, None
    ends = head.lstrip()[:1] + tail.rstrip()[-1:]
    return ends in (b"{}", b"[]"), NOT_KEPT


async def relay_bytes(
    relay: Relay, record: TurnRecord, affinity: Affinity, plan: Plan | None, scan: bool
) -> AsyncIterator[bytes]:
    """Relay a body as it arrives. Its last chunk is held back until the body is known to be whole (a JSON
    body parses, see ``whole_json``) and affinity is recorded; when ``scan``, the id and usage of a
    response object are read from it, with bounded memory. A body that breaks or ends early raises
    ``BodyBroken`` once the request log knows."""
    keep_limit = 1024 * 1024
    is_json = "json" in relay.opened.content_type
    check = scan or is_json
    # Only a body scanned for usage is kept and parsed (up to 5 ms of CPU for a megabyte); the others
    # (retrieved responses, input item lists) are judged by their ends, at no cost.
    kept: bytearray | None = bytearray() if scan else None
    tail_limit = 65536 if scan else 1024
    head = b""
    tail = b""
    held: bytes | None = None
    scrubber = BodyScrubber(relay.route.provider.api_key)  # what the client gets; the scan reads the raw body
    try:
        async for chunk in relay.opened.chunks():
            record.first_event()
            if check:
                if len(head) < 8192:
                    head += chunk[: 8192 - len(head)]
                tail = (tail + chunk[-tail_limit:])[-tail_limit:]
                if kept is not None:
                    kept += chunk
                    if len(kept) > keep_limit:
                        kept = None
            if held:
                yield held
            held = scrubber.feed(chunk)
        rest = scrubber.end()
        held = (held or b"") + rest if held is not None or rest else None
        if check and head:  # an empty body (a 204) has nothing to cut
            whole, value = whole_json(head, tail, bytes(kept) if kept is not None else None)
            if not whole and is_json:
                record.status, record.error_code = 502, "upstream_body_incomplete"
                log.warning("provider %s sent a JSON body that ends early", relay.route.provider.name)
                raise BodyBroken(record.error_code)
            if scan:
                scan_json_response(head, tail, value if whole else INVALID, record.outcome)
        await finish(record, relay.route, affinity, plan)
        if held is not None:
            yield held
    except TransportError as exc:
        record.status, record.error_code = 502, "upstream_stream_error"
        log.warning("provider %s body broke: %r", relay.route.provider.name, exc)
        raise BodyBroken(record.error_code) from exc
    except (asyncio.CancelledError, GeneratorExit):
        record.status, record.error_code = 499, "client_disconnected"
        raise
    finally:
        await relay.opened.close()
        logwriter.submit(record)
