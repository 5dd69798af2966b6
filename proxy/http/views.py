"""HTTP ingress: the Responses API family on /v1, as async Django views."""

import asyncio
import dataclasses
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from providers import routing
from providers.registry import enabled_providers
from proxy.common.labels import endpoint_of
from proxy.common.wire import WireError, parse_body, require_model
from proxy.governance import limits
from proxy.governance.auth import Client, authenticate, presented_key
from proxy.governance.refusals import for_client, unauthenticated
from proxy.http import relay as http_relay
from proxy.turn import Turn, run_guarded
from proxy.turn import sticky_token as turn_state
from proxy.turn.turn import client_address
from proxy.turn.upstream import HttpCall
from proxy.upstream.http import TransportError, open_request, returned_headers

log = logging.getLogger("sluice.http")

View = Callable[..., Awaitable[HttpResponse]]


def error_response(error: WireError) -> HttpResponse:
    response = HttpResponse(error.http_body(), status=error.status, content_type="application/json")
    if error.status == 401:
        response["WWW-Authenticate"] = "Bearer"
    for name, value in getattr(error, "headers", {}).items():  # a limit's Retry-After and x-ratelimit-*
        response[name] = value
    return response


def request_headers(request: HttpRequest) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}  # type: ignore[attr-defined]


def api_view(methods: tuple[str, ...]) -> Callable[[View], View]:
    """Authenticate with a Sluice key, allow ``methods``, and turn every refusal into an OpenAI error."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            headers = request_headers(request)
            raw_key = presented_key(headers)
            client = await authenticate(raw_key)
            if request.method not in methods:
                error = WireError(
                    405, "method_not_allowed", f"Method {request.method} is not allowed on {request.path}."
                )
                counted = await _counted(client, error)
                response = error_response(_refused(request, client, counted))
                if counted is error:
                    response["Allow"] = ", ".join(methods)
                return response
            if client is None:
                return error_response(
                    for_client(_refused(request, None, await unauthenticated(raw_key)), headers)
                )
            try:
                return await view(request, client, headers, *args, **kwargs)
            except WireError as error:
                if not getattr(error, "recorded", False):  # refused before its turn was admitted
                    error = await _counted(client, error)
                    turn = getattr(request, "turn", None)
                    if turn is None:
                        _refused(request, client, error)
                    else:
                        turn.refuse(error)
                return error_response(for_client(error, headers))

        return wrapper

    return decorate


async def _counted(client: Client | None, error: WireError) -> WireError:
    return error if client is None else await limits.count_invalid(client, error)


def _refused(request: HttpRequest, client: Client | None, error: WireError) -> WireError:
    return Turn.refusal(
        error,
        scope=request.scope,  # type: ignore[attr-defined]
        client=client,
        transport="http",
        endpoint=endpoint_of(request.method or "", request.path),
    )


async def _relay(
    request: HttpRequest,
    client: Client,
    headers: dict[str, str],
    *,
    endpoint: str,
    method: str,
    path: str,
    with_body: bool,
    response_id: str | None = None,
) -> HttpResponse:
    """One turn over HTTP: the request read, then the ``Turn`` admitted, routed and opened; the handler
    closes the turn once the response is sent or the client is gone (``ApiHandler.handle``)."""
    scope = request.scope  # type: ignore[attr-defined]
    turn = Turn(client, "http", endpoint, parent=headers, client_addr=client_address(scope), scope=scope)
    request.turn = turn  # type: ignore[attr-defined]
    raw: bytes | None = None
    body: dict[str, Any] | None = None
    model: str | None = None
    if with_body:
        raw = request.body
        body = parse_body(raw)
        model = require_model(body)
        response_id = response_id or body.get("previous_response_id") or None
    turn.ask(model, body, headers)  # the row of a refused turn names its model and session too
    if endpoint in LIMITED_ENDPOINTS:
        guess = limits.estimate(body, len(raw or b""))
        await run_guarded(turn, lambda: turn.admit(LIMITED_ENDPOINTS[endpoint], guess))
    try:
        response = await run_guarded(
            turn, lambda: _open(request, turn, headers, method, path, raw, body, model, response_id)
        )
    except WireError as error:
        if turn.admission.headers:
            error.headers = turn.admission.headers  # type: ignore[attr-defined]
        raise
    for name, value in turn.admission.headers.items():
        response[name] = value
    return response


# Every endpoint counts against the key's request rate. Those that create work hold a turn's slot while
# they run; the others only count a request.
LIMITED_ENDPOINTS = {
    "responses": limits.TURN,
    "compact": limits.TURN,
    "input_tokens": limits.REQUEST,
    "retrieve": limits.REQUEST,
    "delete": limits.REQUEST,
    "cancel": limits.REQUEST,
    "input_items": limits.REQUEST,
}


async def count_request(client: Client) -> dict[str, str]:
    """One request of an endpoint the upstream is not asked for (the model list): it counts against the
    key's rate like any other; a ``WireError`` (429) when that is used up. Its rate headers."""
    admission = await limits.admit(client, None, limits.REQUEST)
    admission.release()
    return admission.headers


async def _open(
    request: HttpRequest,
    turn: Turn,
    headers: dict[str, str],
    method: str,
    path: str,
    raw: bytes | None,
    body: dict[str, Any] | None,
    model: str | None,
    response_id: str | None,
) -> HttpResponse:
    client, record = turn.client, turn.record
    assert client is not None
    if response_id is not None:  # another's response, or one never made here: as if it did not exist
        await turn.require_owner(response_id, previous=body is not None)
    affinity = routing.affinity_for(client.key_id, response_id, record.session_id)
    state = await turn_state.resume(headers.get(turn_state.HEADER), client.key_id)
    if state.provider_id is not None:
        affinity = dataclasses.replace(affinity, provider_id=state.provider_id)
    plan = await turn.routes(model, affinity)
    query = checked_query(request.META.get("QUERY_STRING", ""))
    forwarded = turn_state.forwarded(headers, state, state.provider_id)
    relay = await turn.open_http(plan, HttpCall(method, path, model, raw, body, forwarded, query))
    extra = returned_headers(relay.opened.response)
    upstream_token = relay.opened.response.headers.get(turn_state.HEADER)
    if upstream_token is not None or state.provider_id is not None:
        await turn_state.remember(
            state, relay.route.provider.id, {**extra, turn_state.HEADER: upstream_token or ""}
        )
        extra[turn_state.HEADER] = state.token
    if relay.first is not None:
        response = StreamingHttpResponse(http_relay.relay_sse(turn, relay), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    else:
        response = StreamingHttpResponse(
            http_relay.relay_bytes(turn, relay, scan=turn.record.endpoint in ("responses", "compact")),
            status=relay.opened.status,
            content_type=relay.opened.content_type or "application/json",
        )
    for name, value in extra.items():
        response[name] = value
    return response


@api_view(("POST",))
async def create_response(request: HttpRequest, client: Client, headers: dict[str, str]) -> HttpResponse:
    return await _relay(
        request, client, headers, endpoint="responses", method="POST", path="/responses", with_body=True
    )


@api_view(("POST",))
async def compact(request: HttpRequest, client: Client, headers: dict[str, str]) -> HttpResponse:
    return await _relay(
        request, client, headers, endpoint="compact", method="POST", path="/responses/compact", with_body=True
    )


@api_view(("POST",))
async def input_tokens(request: HttpRequest, client: Client, headers: dict[str, str]) -> HttpResponse:
    return await _relay(
        request,
        client,
        headers,
        endpoint="input_tokens",
        method="POST",
        path="/responses/input_tokens",
        with_body=True,
    )


# The shape of the ids the service issues (resp_ followed by hex): nothing that could change an upstream
# path (".", "/", "?", "#", "%") ever reaches the URL built from it.
RESPONSE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")


def checked_response_id(rid: str) -> str:
    if not RESPONSE_ID.fullmatch(rid):
        raise WireError(
            400, "invalid_response_id", "The response id in the path is not valid.", "response_id"
        )
    return rid


def checked_query(query: str) -> str:
    """The client's query string rebuilt from its decoded pairs: well-formed, whatever was sent."""
    return urlencode(parse_qsl(query, keep_blank_values=True))


def _by_response_id(methods: tuple[str, ...], suffix: str, endpoints: dict[str, str]) -> View:
    """A pass-through view for /responses/{id}...: routed to the provider that produced the response."""

    @api_view(methods)
    async def view(request: HttpRequest, client: Client, headers: dict[str, str], rid: str) -> HttpResponse:
        method = request.method or methods[0]
        rid = checked_response_id(rid)
        return await _relay(
            request,
            client,
            headers,
            endpoint=endpoints[method],
            method=method,
            path=f"/responses/{rid}{suffix}",
            with_body=False,
            response_id=rid,
        )

    return view


response_detail = _by_response_id(("GET", "DELETE"), "", {"GET": "retrieve", "DELETE": "delete"})
cancel = _by_response_id(("POST",), "/cancel", {"POST": "cancel"})
input_items = _by_response_id(("GET",), "/input_items", {"GET": "input_items"})


_upstream_models: dict[int, tuple[float, list[str]]] = {}


async def _provider_models(provider: Any) -> list[str]:
    """Models of a provider that allows any model: its own /models list, cached for a minute."""
    cached = _upstream_models.get(provider.id)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    names: list[str] = []
    try:
        async with asyncio.timeout(provider.connect_timeout + 5):
            opened = await open_request(provider, "GET", "/models", body=None, client_headers={})
            data = json.loads(await opened.read_at_most(limit=4 * 1024 * 1024))
        names = [
            m["id"] for m in data.get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]
    except (TimeoutError, *TransportError, ValueError, AttributeError) as exc:
        log.warning("could not list models of provider %s: %r", provider.name, exc)
    _upstream_models[provider.id] = (time.monotonic(), names)
    return names


async def visible_models(client: Client) -> dict[str, str]:
    """The models the caller may use, with their owners: those of the enabled providers (their allow-lists,
    or the upstream's own list), and redirect names, filtered by the key's and its team's allow-lists."""
    owners: dict[str, str] = {}
    for provider in await enabled_providers.aget():
        names = list(provider.allowed_models) or await _provider_models(provider)
        for name in [*names, *provider.model_redirects]:
            owners.setdefault(name, "sluice")
    policy = client.policy
    if policy is not None and policy.models is not None:  # the key's (and its team's) allow-list
        owners = {name: owner for name, owner in owners.items() if name in policy.models}
    return owners


def model_object(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


@api_view(("GET",))
async def models(request: HttpRequest, client: Client, headers: dict[str, str]) -> HttpResponse:
    rate = await count_request(client)
    owners = await visible_models(client)
    data = [model_object(name, owner) for name, owner in sorted(owners.items())]
    response = HttpResponse(json.dumps({"object": "list", "data": data}), content_type="application/json")
    for name, value in rate.items():
        response[name] = value
    return response


@api_view(("GET",))
async def model_detail(
    request: HttpRequest, client: Client, headers: dict[str, str], name: str
) -> HttpResponse:
    """One model as ``/models`` lists it; like the service, a model the caller may not use does not exist."""
    await count_request(client)
    owner = (await visible_models(client)).get(name)
    if owner is None:
        raise WireError(
            404,
            "model_not_found",
            f"The model '{name[:200]}' does not exist or you do not have access to it.",
            "model",
        )
    return HttpResponse(json.dumps(model_object(name, owner)), content_type="application/json")


async def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    client = await authenticate(presented_key(request_headers(request)))
    error = WireError(404, "not_found", f"Unknown endpoint {request.method} {request.path}.")
    return error_response(_refused(request, client, error))


def max_body_error() -> WireError:
    return WireError(
        413,
        "request_too_large",
        f"The request body is larger than the gateway's limit of {settings.SLUICE_MAX_BODY_BYTES} bytes.",
    )
