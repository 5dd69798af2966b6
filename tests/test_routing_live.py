"""Routing behaviour through a running gateway: the circuit breaker, extra headers, upstream model lists,
compaction, and the system switch for upstream WebSockets."""

import time

import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from websockets.sync.client import connect as ws_connect

from tests.conftest import make_provider, request_logs, sdk


def test_the_breaker_opens_closes_after_a_success_and_reopens_after_the_cooldown(
    gateway, upstream, upstream_b, api_key, settings
):
    from django.core.cache import caches

    from providers.health import breaker_key

    settings.SLUICE_BREAKER_THRESHOLD = 2
    settings.SLUICE_BREAKER_COOLDOWN = 3  # long beside a turn, also on a loaded machine
    failing = make_provider(upstream, name="failing", priority=1)
    make_provider(upstream_b, name="healthy", priority=2)
    client = sdk(gateway, api_key)
    tries = []

    def turn() -> None:
        assert client.responses.create(model="gpt-5.5", input="x").output_text == "echo: x"
        tries.append(upstream.http_requests)

    # One failure, then a success: the success clears the count, so the next failure is the first again.
    upstream.http_fail_status = 500
    turn()
    upstream.http_fail_status = None
    turn()
    assert caches["default"].get(breaker_key(failing.pk)) is None, "a success must close the breaker"
    upstream.http_fail_status = 500
    turn()
    turn()  # the second failure in a row: open
    opened_until = REGISTRY.get_sample_value("sluice_breaker_open_until_seconds", {"provider": "failing"})
    assert opened_until is not None and opened_until > time.time(), "the gauge names the opened breaker"
    turn()
    turn()  # skipped while open
    time.sleep(1.0)
    turn()  # still open within the cooldown
    assert tries == [1, 2, 3, 4, 4, 4, 4]
    time.sleep(2.1)
    turn()  # the cooldown is over: tried again, and fails again
    turn()  # the threshold is reached again: open again
    turn()
    assert tries[7:] == [5, 6, 6]
    time.sleep(3.1)
    upstream.http_fail_status = None
    backup = upstream_b.http_requests
    turn()
    assert (tries[-1], upstream_b.http_requests) == (7, backup), "the recovered provider must serve again"
    assert caches["default"].get(breaker_key(failing.pk)) is None
    assert REGISTRY.get_sample_value("sluice_breaker_open_until_seconds", {"provider": "failing"}) == 0


def test_failures_further_apart_than_ten_cooldowns_never_open_the_breaker(
    gateway, upstream, api_key, settings
):
    """A failure count lives ten cooldowns: a provider failing now and then is not taken out of service."""
    from django.core.cache import caches

    from providers.health import breaker_key

    settings.SLUICE_BREAKER_THRESHOLD = 2
    settings.SLUICE_BREAKER_COOLDOWN = 0.1
    failing = make_provider(upstream, name="failing")
    upstream.http_fail_status = 500
    client = sdk(gateway, api_key).with_options(max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="gpt-5.5", input="x")
    assert caches["default"].get(breaker_key(failing.pk)) == {"failures": 1, "open_until": 0}
    time.sleep(1.2)  # ten cooldowns and a bit
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="gpt-5.5", input="x")
    assert caches["default"].get(breaker_key(failing.pk)) == {"failures": 1, "open_until": 0}, "not aged out"
    assert upstream.http_requests == 2


def test_provider_extra_headers_reach_the_upstream(gateway, upstream, api_key):
    make_provider(upstream, extra_headers={"x-org-tag": "sluice-test"})
    sdk(gateway, api_key).responses.create(model="gpt-5.5", input="x")
    assert upstream.requests[-1].headers["x-org-tag"] == "sluice-test"


def test_models_of_a_provider_that_allows_all_come_from_its_own_list(gateway, upstream, api_key):
    upstream.models = ["model-a", "model-b"]
    make_provider(upstream)
    assert [m.id for m in sdk(gateway, api_key).models.list()] == ["model-a", "model-b"]


def test_compaction_passes_through_and_is_logged(gateway, upstream, api_key):
    make_provider(upstream)
    response = httpx.post(
        gateway.url + "/v1/responses/compact",
        json={"model": "gpt-5.5", "input": [{"role": "user", "content": "long history"}]},
        headers={"authorization": f"Bearer {api_key}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    assert ("POST", "/v1/responses/compact") in [(r.method, r.path) for r in upstream.requests]
    (row,) = request_logs(1)
    assert row.endpoint == "compact"


def test_switching_upstream_websockets_off_sends_turns_over_http(gateway, upstream, api_key):
    import json

    from settings_app.models import SystemSettings

    make_provider(upstream)
    row = SystemSettings.load()
    row.upstream_websockets = False
    row.save()
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {api_key}"},
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "x"}))
        while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
            pass
    assert (upstream.ws_connections, upstream.http_requests) == (0, 1)
    (log,) = request_logs(1)
    assert (log.client_transport, log.upstream_transport, log.fallback_reason) == (
        "websocket",
        "http",
        "setting_off",
    )
