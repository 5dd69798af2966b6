"""One rule for how a turn ends, whatever the transport: the same upstream ending gives the same status and
error code in the request log over HTTP (SSE) and over WebSocket, and the bookkeeping that follows a
terminal event (affinity) runs for every terminal kind on both (docs/protocol.md, "How a turn ends")."""

import json
import time

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import TERMINAL, make_provider, request_logs
from tests.helpers import ws_turn

TRANSPORTS = ["http", "websocket"]


def incomplete() -> dict:
    response = {
        "id": "resp_incomplete1",
        "object": "response",
        "status": "incomplete",
        "model": "gpt-5.5",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [],
        "usage": {"input_tokens": 3, "output_tokens": 7, "total_tokens": 10},
    }
    return {"type": "response.incomplete", "response": response}


def limited_error() -> dict:
    error = {"type": "tokens", "code": "rate_limit_exceeded", "message": "Slow down.", "param": None}
    return {"type": "error", "status": 429, "error": error}


def failed(code: str) -> dict:
    response = {
        "id": "resp_failed1",
        "object": "response",
        "status": "failed",
        "model": "gpt-5.5",
        "error": {"code": code, "message": "It failed."},
        "output": [],
    }
    return {"type": "response.failed", "response": response}


# (what the upstream does, the status and error code the request log must keep)
ENDINGS = [
    pytest.param({"error_event": limited_error()}, 429, "rate_limit_exceeded", id="mid-stream-error-429"),
    pytest.param({"error_event": failed("server_error")}, 502, "server_error", id="response.failed"),
    pytest.param({"error_event": failed("invalid_prompt")}, 400, "invalid_prompt", id="failed-request-fault"),
    pytest.param({"error_event": incomplete()}, 200, "max_output_tokens", id="response.incomplete"),
    pytest.param({"drop_after_events": 2}, 502, "upstream_stream_error", id="broken-stream"),
]


def http_turn(gateway, key: str) -> list[str]:
    kinds = []
    with httpx.stream(
        "POST",
        gateway.url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "x", "stream": True},
        headers={"authorization": f"Bearer {key}", "session-id": "s-rule"},
        timeout=20,
    ) as response:
        try:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    kinds.append(json.loads(line[6:])["type"])
        except httpx.TransportError:
            kinds.append("broken")
    return kinds


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("fault", "status", "code"), ENDINGS)
def test_a_turn_ends_the_same_way_on_both_transports(
    gateway, upstream, api_key, transport, fault, status, code
):
    from providers.routing import session_key

    provider = make_provider(upstream)
    for name, value in fault.items():
        setattr(upstream, name, value)
    if transport == "http":
        http_turn(gateway, api_key)
    else:
        ws_turn(gateway, api_key, {"session-id": "s-rule"})
    (row,) = request_logs(1)
    assert (row.status, row.error_code, row.client_transport) == (status, code, transport)
    if "error_event" in fault:  # a terminal event arrived: its bookkeeping ran (the session is pinned)
        from django.core.cache import caches

        pinned = caches["default"].get(session_key(row.api_key_id, "s-rule"))
        assert pinned == provider.id


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_gone_mid_turn_is_recorded_the_same_way(gateway, upstream, api_key, transport):
    make_provider(upstream)
    upstream.stall_after_events = 2
    if transport == "http":
        with httpx.stream(
            "POST",
            gateway.url + "/v1/responses",
            json={"model": "gpt-5.5", "input": "x", "stream": True},
            headers={"authorization": f"Bearer {api_key}"},
            timeout=20,
        ) as response:
            next(response.iter_lines())
    else:
        with ws_connect(
            gateway.url.replace("http", "ws") + "/v1/responses",
            additional_headers={"authorization": f"Bearer {api_key}"},
        ) as ws:
            ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "x"}))
            ws.recv(timeout=15)
    time.sleep(0.3)
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (499, "client_disconnected")


def test_the_client_beta_values_reach_the_upstream_socket_with_the_websocket_flag(gateway, upstream, api_key):
    make_provider(upstream)
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {api_key}", "openai-beta": "responses_multi_agent=v1"},
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "x"}))
        while json.loads(ws.recv(timeout=15))["type"] not in TERMINAL:
            pass
    (frame,) = [r for r in upstream.requests if r.transport == "websocket"]
    beta = [v.strip() for v in frame.headers["openai-beta"].split(",")]
    assert beta == ["responses_multi_agent=v1", "responses_websockets=2026-02-06"]
