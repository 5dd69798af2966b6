"""The OpenAI SDK through a running gateway over HTTP: turns, tools, affinity, failover, usage and cost."""

import json
import time
from decimal import Decimal

import httpx
import openai
import pytest

from tests.conftest import make_key, make_provider, request_logs, sdk
from tests.fakeupstream import function_call_item, message_item


def test_streaming_turn_relays_events_and_logs_usage_and_cost(gateway, upstream, api_key):
    from proxy.models import ModelPrice

    make_provider(upstream)
    ModelPrice.objects.update_or_create(
        model="gpt-5.5",
        defaults={
            "input_per_million": Decimal("2"),
            "cached_input_per_million": Decimal("0.5"),
            "output_per_million": Decimal("10"),
        },
    )
    events = list(sdk(gateway, api_key).responses.create(model="gpt-5.5", input="hello there", stream=True))

    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "echo: hello there"
    usage = events[-1].response.usage
    (row,) = request_logs(1)
    assert (row.status, row.client_transport, row.upstream_transport) == (200, "http", "http")
    assert row.input_tokens == usage.input_tokens and row.output_tokens == usage.output_tokens
    expected = (Decimal(usage.input_tokens) * 2 + Decimal(usage.output_tokens) * 10) / Decimal(1_000_000)
    assert row.cost == expected.quantize(Decimal("0.00000001"))
    assert row.response_id == events[-1].response.id
    assert row.time_to_first_event_ms is not None and row.duration_ms >= row.time_to_first_event_ms


@pytest.mark.parametrize("per_chunk", [2, 5])
def test_events_that_arrive_together_are_all_relayed_untouched(gateway, upstream, api_key, per_chunk):
    import httpx

    upstream.events_per_chunk = per_chunk
    upstream.event_delay = 0.02  # each chunk is read on its own
    make_provider(upstream)
    with httpx.stream(
        "POST",
        gateway.url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "in bulk", "stream": True},
        headers={"authorization": f"Bearer {api_key}"},
        timeout=20,
    ) as response:
        text = response.read().decode()
    blocks = text.removesuffix("\n\n").split("\n\n")
    events = []
    for block in blocks:
        head, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}", block
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "echo: in bulk"


@pytest.mark.parametrize("size", [1, 300_000])  # a body in one read, and one in many
def test_non_streaming_turn(gateway, upstream, api_key, size):
    make_provider(upstream)
    text = "one shot " * size
    response = sdk(gateway, api_key).responses.create(model="gpt-5.5", input=text)
    assert response.output_text == f"echo: {text}"
    (row,) = request_logs(1)
    assert (row.response_id, row.error_code) == (response.id, "")
    assert row.output_tokens == response.usage.output_tokens > 0
    assert row.input_tokens == response.usage.input_tokens


def test_tool_call_round_trip(gateway, upstream, api_key):
    def responder(body):
        last = body["input"][-1] if isinstance(body["input"], list) else {}
        if last.get("type") == "function_call_output":
            return [message_item(f"weather is {last['output']}")]
        return [function_call_item("get_weather", json.dumps({"city": "Oslo"}), "call_1")]

    upstream.responder = responder
    make_provider(upstream)
    client = sdk(gateway, api_key)
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    first = client.responses.create(
        model="gpt-5.5", input=[{"role": "user", "content": "weather?"}], tools=tools
    )
    call = next(item for item in first.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Oslo"}
    second = client.responses.create(
        model="gpt-5.5",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=tools,
    )
    assert second.output_text == "weather is sunny"


def preferred_and_other(upstream, upstream_b):
    """Two providers where routing alone always picks ``alpha``: affinity is the only way to ``beta``."""
    make_provider(upstream, name="alpha", priority=1)
    make_provider(upstream_b, name="beta", priority=2)


def on_beta(upstream, create):
    """Run ``create`` while alpha fails, so that beta serves it; alpha is healthy again afterwards."""
    upstream.http_fail_status = 500
    try:
        return create()
    finally:
        upstream.http_fail_status = None


@pytest.mark.parametrize("stream", [False, True])
def test_previous_response_id_goes_to_the_provider_that_produced_it(
    gateway, upstream, upstream_b, api_key, stream
):
    preferred_and_other(upstream, upstream_b)
    client = sdk(gateway, api_key)
    if stream:
        events = on_beta(
            upstream, lambda: list(client.responses.create(model="gpt-5.5", input="turn one", stream=True))
        )
        first = events[-1].response
    else:
        first = on_beta(upstream, lambda: client.responses.create(model="gpt-5.5", input="turn one"))
    alpha_before = upstream.http_requests
    second = client.responses.create(model="gpt-5.5", input="and then?", previous_response_id=first.id)
    assert second.output_text == "echo: and then?"
    assert upstream.http_requests == alpha_before, "the continuation went to the preferred provider"
    assert upstream_b.requests[-1].body["previous_response_id"] == first.id
    # A new conversation still goes by priority.
    client.responses.create(model="gpt-5.5", input="fresh")
    assert upstream.http_requests == alpha_before + 1


def test_session_sticks_to_one_provider(gateway, upstream, upstream_b, api_key):
    preferred_and_other(upstream, upstream_b)
    client = sdk(gateway, api_key)
    on_beta(upstream, lambda: client.responses.create(model="gpt-5.5", input="q0", prompt_cache_key="s-42"))
    alpha_before = upstream.http_requests
    for i in range(1, 4):
        client.responses.create(model="gpt-5.5", input=f"q{i}", prompt_cache_key="s-42")
    assert upstream.http_requests == alpha_before and upstream_b.http_requests == 4
    client.responses.create(model="gpt-5.5", input="other", prompt_cache_key="s-43")
    assert upstream.http_requests == alpha_before + 1, "another session goes by priority"


def test_failover_when_the_first_provider_is_down(gateway, upstream, api_key):
    make_provider(None, name="dead", priority=1)
    make_provider(upstream, name="alive", priority=2)
    response = sdk(gateway, api_key).responses.create(model="gpt-5.5", input="still there?")
    assert response.output_text == "echo: still there?"
    (row,) = request_logs(1)
    assert row.provider.name == "alive"


@pytest.mark.parametrize("status", [500, 503, 429, 408, 403, 401])
def test_failover_on_upstream_status(gateway, upstream, upstream_b, api_key, status):
    upstream.http_fail_status = status
    make_provider(upstream, name="failing", priority=1)
    make_provider(upstream_b, name="healthy", priority=2)
    events = list(sdk(gateway, api_key).responses.create(model="gpt-5.5", input="x", stream=True))
    assert events[-1].type == "response.completed"
    assert upstream.http_requests == 1 and upstream_b.http_requests == 1


def test_all_providers_rate_limited_gives_429(gateway, upstream, api_key):
    upstream.http_fail_status = 429
    make_provider(upstream)
    with pytest.raises(openai.RateLimitError):
        sdk(gateway, api_key).responses.create(model="gpt-5.5", input="x")


@pytest.mark.parametrize("case", ["unknown", "disabled", "expired"])
def test_refused_keys_get_401_and_never_reach_the_upstream(gateway, upstream, transactional_db, case):
    import datetime as dt

    from django.utils import timezone

    make_provider(upstream)
    if case == "unknown":
        key = "sk-sluice-not-a-key"
    elif case == "disabled":
        key = make_key("off", enabled=False)[1]
    else:
        key = make_key("old", expires_at=timezone.now() - dt.timedelta(minutes=1))[1]
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(gateway, key).responses.create(model="gpt-5.5", input="x")
    assert info.value.body["code"] == "invalid_api_key"
    assert upstream.http_requests == 0


def test_a_key_that_expires_while_the_key_snapshot_is_cached_stops_at_its_expiry(
    gateway, upstream, transactional_db, settings
):
    import datetime as dt

    from django.utils import timezone
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect

    settings.SLUICE_CONFIG_POLL_SECONDS = 3600  # the snapshot is not reloaded during the test
    make_provider(upstream)
    expires_at = timezone.now() + dt.timedelta(seconds=1.5)
    _, key = make_key("short-lived", expires_at=expires_at)
    client = sdk(gateway, key)
    assert client.responses.create(model="gpt-5.5", input="x").output_text == "echo: x"
    time.sleep(max(0.0, (expires_at - timezone.now()).total_seconds()) + 0.1)
    with pytest.raises(openai.AuthenticationError):
        client.responses.create(model="gpt-5.5", input="x")
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(
            gateway.url.replace("http", "ws") + "/v1/responses",
            additional_headers={"authorization": f"Bearer {key}"},
        )
    assert refused.value.response.status_code == 401
    assert upstream.http_requests == 1


def test_unknown_model_is_a_clear_404_and_no_provider_a_503(gateway, upstream, api_key):
    provider = make_provider(upstream, allowed_models=["gpt-5.5"])
    client = sdk(gateway, api_key)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="gpt-4-nope", input="x")
    assert info.value.body == {
        "type": "invalid_request_error",
        "code": "model_not_found",
        "message": "The model 'gpt-4-nope' is not served by this gateway.",
        "param": "model",
    }
    # A request that names no model (a retrieve) with no provider left to ask.
    stored = client.responses.create(model="gpt-5.5", input="x")
    provider.enabled = False
    provider.save()
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.retrieve(stored.id)
    assert info.value.status_code == 503
    assert info.value.body == {
        "type": "server_error",
        "code": "no_provider",
        "message": "No upstream provider is enabled.",
        "param": None,
    }


@pytest.mark.parametrize("answered", [True, False], ids=["answered", "failed"])
def test_model_redirect_reaches_upstream(gateway, upstream, api_key, answered):
    """The request log names the model the upstream was asked for, even when no answer named it."""
    make_provider(upstream, allowed_models=["fast"], model_redirects={"fast": "gpt-5-mini"})
    if answered:
        response = sdk(gateway, api_key).responses.create(model="fast", input="x")
        assert response.model == "gpt-5-mini"
    else:
        upstream.http_fail_status = 500
        with pytest.raises(openai.APIStatusError):
            sdk(gateway, api_key).responses.create(model="fast", input="x")
    assert upstream.requests[-1].body["model"] == "gpt-5-mini"
    (row,) = request_logs(1)
    assert (row.requested_model, row.upstream_model) == ("fast", "gpt-5-mini")


def test_models_lists_what_the_caller_can_use(gateway, upstream, api_key):
    make_provider(upstream, allowed_models=["gpt-5.5"], model_redirects={"fast": "gpt-5-mini"})
    ids = [m.id for m in sdk(gateway, api_key).models.list()]
    assert ids == ["fast", "gpt-5.5"]


@pytest.mark.parametrize(
    ("allowed", "name", "found"),
    [
        (["gpt-5.5"], "gpt-5.5", True),
        (["gpt-5.5"], "fast", True),  # a redirect name
        ([], "gpt-5-mini", True),  # a provider without an allow-list: the upstream's own list
        (["gpt-5.5"], "gpt-5-mini", False),
        (["gpt-5.5"], "gpt-5.5/extra", False),
    ],
)
def test_a_model_is_retrieved_as_models_lists_it(gateway, upstream, api_key, allowed, name, found):
    make_provider(upstream, allowed_models=allowed, model_redirects={"fast": "gpt-5-mini"})
    client = sdk(gateway, api_key)
    if found:
        model = client.models.retrieve(name)
        assert model.model_dump() == next(m for m in client.models.list() if m.id == name).model_dump()
        assert (model.id, model.object, model.owned_by) == (name, "model", "sluice")
        return
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve(name)
    assert missing.value.body == {
        "type": "invalid_request_error",
        "code": "model_not_found",
        "message": f"The model '{name}' does not exist or you do not have access to it.",
        "param": "model",
    }
    (row,) = request_logs(1)
    assert (row.status, row.error_code, row.endpoint) == (404, "model_not_found", "model")


def test_retrieve_goes_to_the_producing_provider(gateway, upstream, upstream_b, api_key):
    preferred_and_other(upstream, upstream_b)
    client = sdk(gateway, api_key)
    created = on_beta(upstream, lambda: client.responses.create(model="gpt-5.5", input="r"))
    assert client.responses.retrieve(created.id).id == created.id
    assert ("GET", f"/v1/responses/{created.id}") in [(r.method, r.path) for r in upstream_b.requests]


def test_the_body_reaches_the_upstream_byte_for_byte(gateway, upstream, api_key):
    """Unless a redirect changes the model, the client's bytes are relayed untouched (key order, spacing
    and all), never parsed and re-serialised."""
    make_provider(upstream)
    raw = b'{ "input" : "x",  "model":"gpt-5.5" , "metadata": {"b": "1", "a": "2"} }'
    response = httpx.post(
        gateway.url + "/v1/responses",
        content=raw,
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        timeout=20,
    )
    assert response.status_code == 200
    assert upstream.requests[-1].raw == raw.decode()


def test_client_key_never_reaches_upstream(gateway, upstream, api_key):
    make_provider(upstream)
    sdk(gateway, api_key).responses.create(model="gpt-5.5", input="x")
    headers = upstream.requests[-1].headers
    assert headers["authorization"] == f"Bearer {upstream.api_key}"
    assert api_key not in json.dumps(headers)


def test_upstream_connections_are_kept_alive_across_turns(gateway, upstream, api_key):
    make_provider(upstream)
    client = sdk(gateway, api_key)
    for i in range(5):
        list(client.responses.create(model="gpt-5.5", input=f"s{i}", stream=True))
        client.responses.create(model="gpt-5.5", input=f"j{i}")
    assert upstream.http_requests == 10
    assert len(upstream.http_peers) == 1, "every turn opened a new upstream connection"


def test_the_rest_of_the_responses_family_passes_through(gateway, upstream, upstream_b, api_key):
    preferred_and_other(upstream, upstream_b)
    client = sdk(gateway, api_key)
    created = on_beta(upstream, lambda: client.responses.create(model="gpt-5.5", input="family"))
    producer = upstream_b
    items = client.responses.input_items.list(created.id)
    assert items.data, "input items of the stored response"
    assert client.responses.cancel(created.id).id == created.id
    tokens = client.responses.input_tokens.count(model="gpt-5.5", input="count me")
    assert tokens.input_tokens > 0
    client.responses.delete(created.id)
    paths = [(r.method, r.path) for r in producer.requests]
    assert ("GET", f"/v1/responses/{created.id}/input_items") in paths
    assert ("POST", f"/v1/responses/{created.id}/cancel") in paths
    assert ("DELETE", f"/v1/responses/{created.id}") in paths
    endpoints = [row.endpoint for row in request_logs(5)]
    assert {"responses", "input_items", "cancel", "input_tokens", "delete"} <= set(endpoints)


def test_a_response_is_pinned_to_its_provider_for_the_affinity_lifetime_only(
    gateway, upstream, api_key, settings
):
    """`SLUICE_RESPONSE_AFFINITY_TTL` bounds how long (and so how many) response pins the cache holds."""
    from django.core.cache import caches

    from providers.routing import response_key

    settings.SLUICE_RESPONSE_AFFINITY_TTL = 1
    provider = make_provider(upstream)
    response = sdk(gateway, api_key).responses.create(model="gpt-5.5", input="x")
    assert caches["default"].get(response_key(response.id)) == provider.pk
    time.sleep(1.2)
    assert caches["default"].get(response_key(response.id)) is None
