"""What an upstream's faults become for the client and in the request log: a client's own mistake is
relayed as it is and costs the provider nothing; a provider's fault fails over or ends the stream clearly."""

import json
import time

import httpx
import pytest
from django.core.cache import caches

from providers.health import breaker_key
from tests.conftest import make_provider, request_logs
from tests.helpers import post_json, ws_turn

CLIENT_FAULTS = [400, 404, 422]


def sse_blocks(gateway, key: str) -> list[dict]:
    """A streamed turn over HTTP: the data of each event, in order."""
    with httpx.stream(
        "POST",
        gateway.url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "x", "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        text = response.read().decode()
    return [
        json.loads(line[6:])
        for block in text.split("\n\n")
        for line in block.split("\n")
        if line.startswith("data: ")
    ]


# A client's fault: relayed with its own status, never a failover, never a breaker count.


# Every status over HTTP, where the status decides failover; one each through the WebSocket paths.
@pytest.mark.parametrize(
    ("client", "status"),
    [
        *[("http", status) for status in CLIENT_FAULTS],
        ("websocket/upstream-http", 422),
        ("websocket/upstream-websocket", 400),
    ],
)
def test_a_client_fault_is_relayed_with_its_status_and_costs_the_provider_nothing(
    gateway, upstream, upstream_b, api_key, status, client
):
    upstream.http_fail_status = upstream.ws_error_status = status
    first = make_provider(
        upstream, name="first", priority=1, websocket_mode="never" if client.endswith("http") else "auto"
    )
    make_provider(upstream_b, name="second", priority=2)
    counted = {"failures": 1, "open_until": 0}  # a failure counted before: a client fault leaves it as it is
    caches["default"].set(breaker_key(first.pk), counted, 60)
    if client == "http":
        response = post_json(gateway, api_key)
        assert response.status_code == status
        error = response.json()["error"]
    else:
        (event,) = ws_turn(gateway, api_key)
        assert event["type"] == "error" and event["status"] == status
        error = event["error"]
    assert error["message"] == f"Upstream refused the request (status {status})."
    assert error["type"] == "invalid_request_error"
    assert (upstream_b.http_requests, upstream_b.ws_connections) == (0, 0), "a client fault failed over"
    assert caches["default"].get(breaker_key(first.pk)) == counted, (
        "a client fault counted or cleared the breaker"
    )
    (row,) = request_logs(1)
    transport = "websocket" if client.endswith("upstream-websocket") else "http"
    assert (row.status, row.provider_id, row.upstream_transport) == (status, first.pk, transport)


@pytest.mark.parametrize("client", ["http", "websocket"])
def test_when_every_provider_fails_the_client_gets_a_502_with_the_last_error(
    gateway, upstream, api_key, client
):
    make_provider(None, name="dead", priority=1, websocket_mode="never")
    make_provider(upstream, name="refusing", priority=2, websocket_mode="never")
    upstream.api_key = "sk-another-key-entirely"  # the stored provider key is now refused, and quoted
    if client == "http":
        response = post_json(gateway, api_key)
        assert response.status_code == 502
        error = response.json()["error"]
    else:
        (event,) = ws_turn(gateway, api_key)
        assert event["type"] == "error" and event["status"] == 502
        error = event["error"]
    assert error == {
        "type": "server_error",
        "code": "upstream_unavailable",
        "param": None,
        "message": "No upstream provider could serve the request. Last error: Incorrect API key provided: "
        "***. You can find your API key at https://platform.openai.com.",
    }
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (502, "upstream_unavailable")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            502,
            b"<html>502 Bad Gateway</html>",
            ("upstream_error", "<html>502 Bad Gateway</html>", "server_error", None),
        ),
        (400, b'{"error": "plain words"}', ("upstream_error", "plain words", "invalid_request_error", None)),
        (500, b'{"error": {"message": "boom"}}', ("upstream_error", "boom", "server_error", None)),
        (503, b"\xff" + b"x" * 600, ("upstream_error", "\ufffd" + "x" * 499, "server_error", None)),
        (429, b"", ("rate_limit_exceeded", "Upstream error.", "invalid_request_error", None)),
        (
            401,
            b'{"error": {"message": "bad k3y-123", "code": "invalid_api_key", "param": "p", "type": "t"}}',
            ("invalid_api_key", "bad ***", "t", "p"),
        ),
    ],
)
def test_any_upstream_error_body_becomes_an_openai_error(status, body, expected):
    """Upstream error bodies come in every shape (a proxy's HTML page, an error that is a bare string,
    nothing at all); the client always gets an OpenAI error with the upstream's words, scrubbed."""
    from proxy.turn.upstream import upstream_error

    error = upstream_error(status, body, "k3y-123")
    assert (error.status, error.code, error.message, error.type, error.param) == (status, *expected)


# A provider that hangs before its first byte.


def test_an_http_upstream_that_hangs_before_its_first_byte_is_a_504(gateway, upstream, api_key):
    upstream.hang = True
    make_provider(upstream, connect_timeout=10, first_byte_timeout=0.5)
    started = time.monotonic()
    response = post_json(gateway, api_key)
    took = time.monotonic() - started
    assert response.status_code == 504
    assert 0.5 <= took < 3, f"the first-byte deadline of 0.5 s took {took:.2f} s (connect + first byte?)"
    assert response.json()["error"] == {
        "type": "server_error",
        "code": "upstream_timeout",
        "param": None,
        "message": "The upstream did not answer in time.",
    }
    assert upstream.wait_for(lambda: upstream.open_http_streams == 0), "the hung request was left open"
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (504, "upstream_timeout")


@pytest.mark.parametrize("client", ["http", "websocket"])
def test_an_http_upstream_that_hangs_before_its_first_byte_fails_over(
    gateway, upstream, upstream_b, api_key, client
):
    upstream.hang = True
    hung = make_provider(
        upstream, name="hung", priority=1, connect_timeout=0.5, first_byte_timeout=0.5, websocket_mode="never"
    )
    make_provider(upstream_b, name="backup", priority=2, websocket_mode="never")
    if client == "http":
        response = post_json(gateway, api_key, input="anyone?")
        assert response.status_code == 200 and response.json()["output"][0]["content"][0]["text"] == (
            "echo: anyone?"
        )
    else:
        assert ws_turn(gateway, api_key)[-1]["type"] == "response.completed"
    assert (upstream.http_requests, upstream_b.http_requests) == (1, 1)
    assert caches["default"].get(breaker_key(hung.pk))["failures"] == 1


# The first-byte deadline bounds the wait for the response head; the idle deadline, each silence after it.


@pytest.mark.parametrize("client", ["json", "sse", "websocket"])
def test_a_slow_first_byte_over_http_is_bounded_by_the_first_byte_deadline_not_the_idle_one(
    gateway, upstream, api_key, client
):
    """A response head that takes longer than the idle deadline but less than the first-byte one (a
    non-streamed answer comes only when it is whole) is a turn, not a timeout."""
    upstream.head_delay = 0.8
    make_provider(upstream, first_byte_timeout=5, idle_timeout=0.3, websocket_mode="never")
    if client == "json":
        response = post_json(gateway, api_key)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"
    elif client == "sse":
        assert sse_blocks(gateway, api_key)[-1]["type"] == "response.completed"
    else:
        assert ws_turn(gateway, api_key)[-1]["type"] == "response.completed"


def test_a_silence_after_the_head_over_http_is_bounded_by_the_idle_deadline(gateway, upstream, api_key):
    upstream.event_delay = 3.0
    make_provider(upstream, first_byte_timeout=10, idle_timeout=0.3, websocket_mode="never")
    started = time.monotonic()
    events = sse_blocks(gateway, api_key)
    took = time.monotonic() - started
    # The event after response.created never comes (3 s later): the silence is cut 0.3 s in, as over
    # WebSocket, with the stream's flat error event.
    assert [e["type"] for e in events] == ["response.created", "error"], events
    assert events[-1]["code"] == "upstream_stream_error", events[-1]
    assert 0.3 <= took < 2.5, f"the silence was cut after {took:.2f} s"
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (502, "upstream_stream_error")


# Streams that end badly.


def test_an_sse_stream_that_ends_without_a_terminal_event_is_incomplete(gateway, upstream, api_key):
    upstream.omit_terminal = True
    make_provider(upstream)
    events = sse_blocks(gateway, api_key)
    assert events[0]["type"] == "response.created"
    assert events[-2]["type"] == "response.output_item.done"
    assert events[-1]["type"] == "error" and events[-1]["code"] == "upstream_stream_incomplete"
    assert events[-1]["sequence_number"] == len(events) - 1
    assert events[-1]["message"] == "The upstream stream ended before the response finished."
    assert events[-1]["param"] is None
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (502, "upstream_stream_incomplete")


@pytest.mark.parametrize(("kind", "status"), [("response.failed", 502), ("error", 502)])
def test_a_failed_sse_turn_is_relayed_and_logged_with_its_status_and_code(
    gateway, upstream, api_key, kind, status
):
    upstream.fail_event = kind
    provider = make_provider(upstream)
    events = sse_blocks(gateway, api_key)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", kind]
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (status, "server_error")
    # A failed turn is the provider's answer, not a transport failure; a success is not recorded either.
    assert caches["default"].get(breaker_key(provider.pk)) is None


@pytest.mark.parametrize(("kind", "status"), [("response.failed", 502), ("error", 500)])
def test_a_failed_websocket_turn_is_relayed_and_logged_with_its_status_and_code(
    gateway, upstream, api_key, kind, status
):
    upstream.fail_event = kind
    make_provider(upstream)
    events = ws_turn(gateway, api_key)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", kind]
    (row,) = request_logs(1)
    assert (row.status, row.error_code, row.upstream_transport) == (status, "server_error", "websocket")


def test_an_upstream_that_does_not_stream_ends_a_websocket_turn_with_a_502(gateway, upstream, api_key):
    upstream.ignore_stream = True
    make_provider(upstream, websocket_mode="never")
    assert ws_turn(gateway, api_key) == [
        {
            "type": "error",
            "status": 502,
            "error": {
                "type": "server_error",
                "code": "upstream_not_streaming",
                "message": "The upstream did not answer with an event stream.",
                "param": None,
            },
        }
    ]
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (502, "upstream_not_streaming")


# The body limit.


def test_a_chunked_body_over_the_limit_is_refused_before_any_upstream_contact(
    gateway, upstream, api_key, settings
):
    settings.SLUICE_MAX_BODY_BYTES = 1000
    make_provider(upstream)

    def chunks():
        yield b'{"model": "gpt-5.5", "input": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    response = httpx.post(
        gateway.url + "/v1/responses",
        content=chunks(),  # no Content-Length: sent chunked
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        timeout=20,
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert upstream.requests == []
    # Just under the limit, the same chunked body goes through.
    small = httpx.post(
        gateway.url + "/v1/responses",
        content=iter([b'{"model": "gpt-5.5", ', b'"input": "' + b"y" * 900 + b'"}']),
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        timeout=20,
    )
    assert small.status_code == 200, small.text
