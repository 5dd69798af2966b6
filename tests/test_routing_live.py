"""Routing behaviour through a running gateway: the circuit breaker, extra headers, upstream model lists,
compaction, and the system switch for upstream WebSockets."""

import httpx
from websockets.sync.client import connect as ws_connect

from tests.conftest import make_provider, request_logs, sdk


def test_a_failing_provider_is_skipped_after_the_threshold(gateway, upstream, upstream_b, api_key, settings):
    settings.SLUICE_BREAKER_THRESHOLD = 3
    settings.SLUICE_BREAKER_COOLDOWN = 60
    upstream.http_fail_status = 500
    make_provider(upstream, name="failing", priority=1)
    make_provider(upstream_b, name="healthy", priority=2)
    client = sdk(gateway, api_key)
    for i in range(6):
        assert client.responses.create(model="gpt-5.5", input=f"t{i}").output_text == f"echo: t{i}"
    assert upstream.http_requests == 3, "the open breaker should keep turns off the failing provider"
    assert upstream_b.http_requests == 6


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
