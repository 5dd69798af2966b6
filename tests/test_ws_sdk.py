"""WebSocket mode through a running gateway with the OpenAI SDK's ``responses.connect()``."""

import json
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import TERMINAL, make_provider, request_logs, sdk
from tests.conftest import sdk_turn as run_turn


def text_of(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def chain_three_turns(gateway, key: str) -> list[list]:
    turns = []
    with sdk(gateway, key).responses.connect(max_retries=0) as conn:
        previous = None
        for word in ("one", "two", "three"):
            extra = {"previous_response_id": previous} if previous else {}
            events = run_turn(
                conn, model="gpt-5.5", store=False, input=[{"role": "user", "content": word}], **extra
            )
            assert events[-1].type == "response.completed", events[-1]
            previous = events[-1].response.id
            turns.append(events)
    return turns


def test_three_chained_turns_with_store_false_share_one_upstream_socket(gateway, upstream, api_key):
    make_provider(upstream)
    turns = chain_three_turns(gateway, api_key)
    assert [text_of(t) for t in turns] == ["echo: one", "echo: two", "echo: three"]
    assert upstream.ws_connections == 1
    assert upstream.http_requests == 0
    frames = [r.body for r in upstream.requests if r.transport == "websocket"]
    assert frames[1]["previous_response_id"] == turns[0][-1].response.id
    assert frames[2]["input"] == [{"role": "user", "content": "three"}], "the gateway must not resend history"
    rows = request_logs(3)
    assert [(r.client_transport, r.upstream_transport, r.fallback_reason) for r in rows] == [
        ("websocket", "websocket", "")
    ] * 3
    assert rows[0].ws_handshake_ms is not None and rows[0].upstream_ws_url.startswith("ws://127.0.0.1")
    assert all(r.output_tokens > 0 for r in rows)
    deadline = time.monotonic() + 5
    while upstream.open_ws and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.open_ws == 0, "the upstream socket outlived its client"


def test_http_only_upstream_continuation_is_served_by_the_gateway(gateway, upstream, api_key):
    make_provider(upstream, websocket_mode="never")
    turns = chain_three_turns(gateway, api_key)
    assert [text_of(t) for t in turns] == ["echo: one", "echo: two", "echo: three"]
    assert upstream.ws_connections == 0
    last = [r.body for r in upstream.requests if r.transport == "http"][-1]
    assert "previous_response_id" not in last
    said = [item.get("content") for item in last["input"] if item.get("role") == "user"]
    assert said == ["one", "two", "three"], "the full conversation must be sent upstream"
    rows = request_logs(3)
    assert {(r.upstream_transport, r.fallback_reason) for r in rows} == {("http", "provider_never")}


def test_fallback_when_the_upstream_refuses_the_upgrade(gateway, upstream, api_key):
    upstream.ws_refuse_status = 426
    make_provider(upstream)
    turns = chain_three_turns(gateway, api_key)
    assert text_of(turns[2]) == "echo: three"
    assert upstream.ws_handshakes_refused == 1, "a refused upgrade must be remembered, not retried every turn"
    rows = request_logs(3)
    assert [r.fallback_reason for r in rows] == ["upgrade_refused", "known_unsupported", "known_unsupported"]


def test_a_refused_upgrade_is_tried_again_once_its_memory_expires(gateway, upstream, api_key, settings):
    """An upstream that refused the upgrade may enable WebSockets later: the refusal is remembered for
    SLUICE_WS_UNSUPPORTED_TTL seconds, not forever."""
    settings.SLUICE_WS_UNSUPPORTED_TTL = 1
    upstream.ws_refuse_status = 426
    make_provider(upstream)
    chain_three_turns(gateway, api_key)
    assert upstream.ws_handshakes_refused == 1
    time.sleep(1.2)
    upstream.ws_refuse_status = None
    chain_three_turns(gateway, api_key)
    assert upstream.ws_handshakes_refused == 1 and upstream.ws_connections == 1, "the upgrade was tried again"


def test_an_open_upstream_socket_serves_on_after_another_connection_saw_the_upgrade_refused(
    gateway, upstream, api_key
):
    """A refused upgrade remembered for a provider stops new upstream sockets, not the one already open."""
    make_provider(upstream)
    client = sdk(gateway, api_key)
    with client.responses.connect(max_retries=0) as first:
        assert run_turn(first, model="gpt-5.5", store=False, input="one")[-1].type == "response.completed"
        upstream.ws_refuse_status = 426
        with client.responses.connect(max_retries=0) as second:
            assert run_turn(second, model="gpt-5.5", input="two")[-1].type == "response.completed"
        assert upstream.ws_handshakes_refused == 1
        assert run_turn(first, model="gpt-5.5", store=False, input="three")[-1].type == "response.completed"
    assert [(r.transport, r.body["input"]) for r in upstream.requests if r.body] == [
        ("websocket", "one"),
        ("http", "two"),
        ("websocket", "three"),
    ]


def test_a_provider_set_to_always_use_websockets_fails_the_turn_rather_than_fall_back(
    gateway, upstream, api_key
):
    upstream.ws_refuse_status = 426
    make_provider(upstream, websocket_mode="always")
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {api_key}"},
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "x"}))
        frame = json.loads(ws.recv(timeout=10))
    assert frame == {
        "type": "error",
        "status": 502,
        "error": {
            "type": "server_error",
            "code": "upstream_unavailable",
            "message": "No upstream provider could serve the request. "
            "Last error: The upstream WebSocket failed.",
            "param": None,
        },
    }
    assert upstream.http_requests == 0 and upstream.ws_handshakes_refused == 1


def test_upstream_drop_mid_stream_gives_an_error_frame_and_the_socket_lives_on(gateway, upstream, api_key):
    make_provider(upstream)
    upstream.drop_after_events = 3
    with sdk(gateway, api_key).responses.connect(max_retries=0) as conn:
        events = run_turn(conn, model="gpt-5.5", input="first")
        assert events[-1].type == "error"
        assert upstream.http_requests == 0, "no replay over HTTP after the first event"
        upstream.drop_after_events = None
        events = run_turn(conn, model="gpt-5.5", input="second")
        assert text_of(events) == "echo: second"
    rows = request_logs(2)
    assert rows[0].status == 502 and rows[0].error_code == "upstream_stream_error"


def test_client_drop_mid_turn_closes_the_upstream_socket(gateway, upstream, api_key):
    make_provider(upstream)
    upstream.text_deltas = 200
    upstream.event_delay = 0.05
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {api_key}"},
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "long"}))
        while "output_text.delta" not in ws.recv(timeout=10):
            pass
    deadline = time.monotonic() + 5
    while upstream.open_ws and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.open_ws == 0
    (row,) = request_logs(1)
    assert row.status == 499 and row.error_code == "client_disconnected"


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("unknown key", 401, "invalid_api_key"),
        ("no key", 401, "invalid_api_key"),
        ("client websockets off", 426, "websockets_disabled"),
        ("unknown path", 404, "not_found"),
    ],
)
def test_refused_upgrades_answer_a_real_status_and_an_openai_error(
    gateway, upstream, api_key, case, status, code
):
    from settings_app.models import SystemSettings

    make_provider(upstream)
    headers = {"authorization": f"Bearer {api_key}"}
    path = "/v1/responses"
    if case == "unknown key":
        headers = {"authorization": "Bearer sk-wrong"}
    elif case == "no key":
        headers = {}
    elif case == "unknown path":
        path = "/v1/elsewhere"
    else:
        settings_row = SystemSettings.load()
        settings_row.client_websockets = False
        settings_row.save()
    with pytest.raises(InvalidStatus) as info:
        ws_connect(gateway.url.replace("http", "ws") + path, additional_headers=headers)
    assert info.value.response.status_code == status
    assert json.loads(info.value.response.body)["error"]["code"] == code
    assert upstream.requests == []
    if status == 426:  # HTTP keeps working: this is where clients fall back to.
        assert sdk(gateway, api_key).responses.create(model="gpt-5.5", input="x").output_text == "echo: x"


def test_subprotocol_key_is_accepted_and_never_echoed(gateway, upstream, api_key):
    make_provider(upstream)
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        subprotocols=["realtime", f"openai-insecure-api-key.{api_key}"],
    ) as ws:
        assert ws.subprotocol == "realtime"
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}))
        while True:
            event = json.loads(ws.recv(timeout=10))
            if event["type"] in TERMINAL:
                break
    assert event["type"] == "response.completed"


def test_revoking_a_key_in_the_admin_closes_its_live_sockets(gateway, upstream, transactional_db):
    import re

    import httpx
    from django.contrib.auth import get_user_model
    from django.test import Client
    from websockets.exceptions import ConnectionClosed

    from tests.conftest import make_key

    make_provider(upstream)
    key, raw = make_key("soon-revoked")
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    django_client = Client()
    django_client.force_login(admin)
    browser = httpx.Client(
        base_url=gateway.url, cookies={"sessionid": django_client.cookies["sessionid"].value}
    )
    change_url = f"/admin/proxy/apikey/{key.pk}/change/"
    page = browser.get(change_url)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {raw}"},
    ) as ws:
        saved = browser.post(
            change_url,
            data={
                "csrfmiddlewaretoken": token,
                "name": key.name,
                "owner": key.owner_id,
                "expires_at_0": "",
                "expires_at_1": "",
            },
            headers={"referer": gateway.url + change_url},
        )
        assert saved.status_code == 302, saved.text[:500]
        error = json.loads(ws.recv(timeout=5))
        assert error["type"] == "error" and error["status"] == 401
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1008


def test_nothing_leaks_after_many_connections(gateway, upstream, api_key):
    import asyncio
    import gc

    make_provider(upstream)

    def gateway_tasks() -> int:
        return len(asyncio.all_tasks(gateway.server_loop))

    url = gateway.url.replace("http", "ws") + "/v1/responses"
    headers = {"authorization": f"Bearer {api_key}"}
    with ws_connect(url, additional_headers=headers) as ws:  # warm every lazy structure once
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "warm"}))
        while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
            pass
    time.sleep(0.3)
    baseline = gateway_tasks()
    for i in range(20):
        with ws_connect(url, additional_headers=headers) as ws:
            ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": f"n{i}"}))
            if i % 2:  # half of them leave mid-turn
                ws.recv(timeout=10)
                continue
            while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
                pass
    deadline = time.monotonic() + 5
    while (gateway_tasks() > baseline or upstream.open_ws) and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()
    assert gateway_tasks() <= baseline, "tasks outlived their connections"
    assert upstream.open_ws == 0, "upstream sockets outlived their clients"
    assert upstream.ws_connections == 21


def _one_turn(gateway, key: str, text: str = "x") -> list[dict]:
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {key}"},
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": text}))
        events = []
        while True:
            events.append(json.loads(ws.recv(timeout=15)))
            if events[-1]["type"] in TERMINAL:
                return events


def test_silent_upstream_socket_times_out_and_fails_over(gateway, upstream, upstream_b, api_key):
    upstream.hang = True
    make_provider(upstream, name="silent", priority=1, first_byte_timeout=0.5)
    make_provider(upstream_b, name="backup", priority=2)
    events = _one_turn(gateway, api_key, "anyone?")
    assert events[-1]["type"] == "response.completed"
    assert upstream.ws_connections == 1 and upstream_b.ws_connections == 1


def test_upstream_socket_silent_mid_stream_gives_an_error_frame(gateway, upstream, api_key):
    # The idle timeout is shorter than the first-byte timeout: after the first event, a gap of 0.6 s must
    # end the turn 0.3 s after the last event, not at the first-byte limit (which a 10-event stream with
    # 0.6 s gaps would outlast, relaying events the whole time).
    upstream.event_delay = 0.6
    make_provider(upstream, first_byte_timeout=5, idle_timeout=0.3)
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {api_key}"},
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "x"}))
        events, arrived = [], []
        while not events or events[-1]["type"] not in TERMINAL:
            events.append(json.loads(ws.recv(timeout=15)))
            arrived.append(time.monotonic())
    assert [e["type"] for e in events] == ["response.created", "error"]
    assert events[-1]["error"]["code"] == "upstream_stream_error"
    assert 0.25 < arrived[-1] - arrived[0] < 0.6 + 1.0, "the idle timeout was not enforced"
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (502, "upstream_stream_error")


def test_disabling_the_live_provider_moves_the_next_turn(gateway, upstream, upstream_b, api_key):
    first = make_provider(upstream, name="first", priority=1)
    make_provider(upstream_b, name="second", priority=2)
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {api_key}"},
    ) as ws:
        for word in ("one", "two"):
            ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": word}))
            while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
                pass
            if word == "one":
                assert (upstream.ws_connections, upstream_b.ws_connections) == (1, 0)
                first.enabled = False
                first.save()
    assert upstream_b.ws_connections == 1
    assert [r.body["input"] for r in upstream_b.requests if r.transport == "websocket"] == ["two"]


@pytest.mark.parametrize("mode", ["auto", "never"], ids=["upstream-websocket", "upstream-http"])
def test_only_stored_responses_are_pinned(gateway, upstream, api_key, mode):
    """Stored responses are pinned to their provider (for a continuation from anywhere), whichever the
    client's and the upstream's transport; ``store: false`` ones live on their connection only."""
    from django.core.cache import cache

    from providers.routing import response_key

    provider = make_provider(upstream, websocket_mode=mode)
    turns = chain_three_turns(gateway, api_key)
    assert all(cache.get(response_key(t[-1].response.id)) is None for t in turns)
    over_http = sdk(gateway, api_key).responses.create(model="gpt-5.5", input="keep me")
    over_socket = _one_turn(gateway, api_key, "and me")[-1]["response"]["id"]
    assert upstream.requests[-1].transport == ("websocket" if mode == "auto" else "http")
    assert [cache.get(response_key(i)) for i in (over_http.id, over_socket)] == [provider.id, provider.id]
