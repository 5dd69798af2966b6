"""A turn's upstream over HTTP: one route opened (its first event read), and how an upstream's refusal or
failure reads to the client and to the failover loop (``proxy.turn.failover``)."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from providers.routing import Route
from proxy.common.record import TurnRecord
from proxy.common.scrubbing import scrub, scrub_value
from proxy.common.wire import Event, WireError
from proxy.upstream.http import Opened, TransportError, open_request

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


def body_for(route: Route, model: str | None, raw: bytes | None, body: dict[str, Any] | None) -> bytes | None:
    """The request body for a route: the client's bytes untouched unless the model is redirected."""
    if body is None or not model or route.upstream_model == model:
        return raw
    return json.dumps({**body, "model": route.upstream_model}).encode()


async def open_route(route: Route, record: TurnRecord, call: HttpCall) -> Relay:
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
