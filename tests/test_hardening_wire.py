"""Hostile input and leaky upstreams on the wire: deep JSON, secrets inside streamed error events."""

import json

import pytest
from websockets.sync.client import connect

from tests.conftest import make_provider, request_logs
from tests.helpers import post

DEEP = b'{"model": "gpt-5.5", "input": ' + b"[" * 1000 + b"]" * 1000 + b"}"
LEAKED = "sk-proj-abcdefghijklmnop1234567890"


def ws(gateway, key: str):
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    return connect(url, additional_headers={"authorization": f"Bearer {key}"}, open_timeout=10)


def frames_until_terminal(sock) -> list[dict]:
    frames = []
    while True:
        frame = json.loads(sock.recv(timeout=10))
        frames.append(frame)
        if frame["type"] in ("response.completed", "response.failed", "response.incomplete", "error"):
            return frames


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_body_is_a_400_invalid_json(gateway, upstream, api_key, depth):
    make_provider(upstream)
    body = b'{"model": "gpt-5.5", "input": ' + b"[" * depth + b"]" * depth + b"}"
    response = post(gateway, api_key, body)
    assert response.status_code == 400, response.text[:200]
    assert response.json()["error"]["code"] == "invalid_json"
    assert upstream.http_requests == 0


def test_deeply_nested_frame_is_an_error_frame_and_the_socket_keeps_working(gateway, upstream, api_key):
    make_provider(upstream)
    with ws(gateway, api_key) as sock:
        for _ in range(3):
            sock.send(DEEP.replace(b"{", b'{"type": "response.create", ', 1).decode())
            (frame,) = frames_until_terminal(sock)
            assert frame["type"] == "error" and frame["error"]["code"] == "invalid_json", frame
        sock.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}))
        assert frames_until_terminal(sock)[-1]["type"] == "response.completed"


def leaky_error(upstream) -> dict:
    message = f"proxy said: Authorization: Bearer {upstream.api_key}; also {LEAKED}"
    return {"type": "error", "code": "server_error", "message": message, "param": None}


def assert_scrubbed(text: str, upstream) -> None:
    assert "server_error" in text, text  # the error itself reaches the client
    assert upstream.api_key not in text and LEAKED not in text, text


def test_sse_error_event_is_scrubbed_and_ordinary_events_are_untouched(gateway, upstream, api_key):
    upstream.api_key = "provider-key-without-any-known-shape-42"
    make_provider(upstream)
    upstream.error_event = leaky_error(upstream)
    body = json.dumps({"model": "gpt-5.5", "input": "hi", "stream": True}).encode()
    response = post(gateway, api_key, body)
    assert response.status_code == 200
    assert_scrubbed(response.text, upstream)
    created = response.text.split("\n\n")[0]
    # The first event is relayed byte for byte (the fake's own spacing, not a re-serialisation).
    assert created.startswith('event: response.created\ndata: {"type": "response.created"')
    upstream.error_event = None
    clean = post(gateway, api_key, body).text
    assert "response.completed" in clean and '"sequence_number": 0}' in clean.split("\n\n")[0]
    request_logs(2)


@pytest.mark.parametrize("mode", ["always", "never"])
def test_websocket_error_frame_is_scrubbed_on_both_upstream_transports(gateway, upstream, api_key, mode):
    upstream.api_key = "provider-key-without-any-known-shape-42"
    make_provider(upstream, websocket_mode=mode)
    upstream.error_event = leaky_error(upstream)
    with ws(gateway, api_key) as sock:
        sock.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}))
        frames = frames_until_terminal(sock)
    assert frames[0]["type"] == "response.created"
    assert_scrubbed(json.dumps(frames[-1]), upstream)
    assert (upstream.ws_connections > 0) is (mode == "always")
    request_logs(1)
