"""Bad input and broken upstreams over HTTP: OpenAI-style errors, never a 500, streams that end cleanly."""

import json
import logging
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from proxy.models import ApiKey
from tests.conftest import make_provider, request_logs, sdk
from tests.helpers import post


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"input": "no model"}', "missing_required_parameter"),
        (b'{"model": "", "input": "x"}', "missing_required_parameter"),
        (b'{"model": 5, "input": "x"}', "invalid_type"),
        (b'{"model": ["gpt-5.5"], "input": "x"}', "invalid_type"),
    ],
)
def test_malformed_body_is_a_400_with_an_openai_error(gateway, upstream, api_key, body, code):
    make_provider(upstream)
    response = post(gateway, api_key, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert upstream.http_requests == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_v1_without_its_slash_is_a_json_404_not_an_html_redirect(gateway, api_key, method):
    response = httpx.request(method, gateway.url + "/v1", headers={"authorization": f"Bearer {api_key}"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"


def test_body_over_the_limit_is_a_413(gateway, upstream, api_key, settings):
    settings.SLUICE_MAX_BODY_BYTES = 1000
    make_provider(upstream)
    response = post(gateway, api_key, b'{"model": "gpt-5.5", "input": "' + b"x" * 2000 + b'"}')
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    (row,) = request_logs(1)
    assert (row.status, row.error_code, row.api_key_id) == (413, "request_too_large", ApiKey.objects.get().pk)


def test_large_bodies_within_the_default_limit_pass(gateway, upstream, api_key):
    make_provider(upstream)
    big = "y" * (5 * 1024 * 1024)  # over Django's 2.5 MB default
    response = post(gateway, api_key, json.dumps({"model": "gpt-5.5", "input": big}).encode())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["output"][0]["content"][0]["text"].startswith("echo: yyy")
    # Over a megabyte, the id and usage are read from the head and tail of the body, not from all of it.
    (row,) = request_logs(1)
    assert (row.response_id, row.input_tokens, row.output_tokens) == (
        answer["id"],
        answer["usage"]["input_tokens"],
        answer["usage"]["output_tokens"],
    )


def test_missing_key_is_a_401_and_x_api_key_works(gateway, upstream, api_key):
    make_provider(upstream)
    anonymous = httpx.post(gateway.url + "/v1/responses", json={"model": "gpt-5.5", "input": "x"}, timeout=20)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "invalid_request_error"
    keyed = httpx.post(
        gateway.url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "x"},
        headers={"x-api-key": api_key},
        timeout=20,
    )
    assert keyed.status_code == 200


def test_wrong_method_and_unknown_path(gateway, api_key):
    wrong = httpx.get(gateway.url + "/v1/responses", headers={"authorization": f"Bearer {api_key}"})
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    unknown = httpx.get(gateway.url + "/v1/nothing-here", headers={"authorization": f"Bearer {api_key}"})
    assert unknown.status_code == 404 and "error" in unknown.json()


@pytest.fixture
def server_errors() -> Iterator[list[str]]:
    """What the served gateway's uvicorn logs as errors during the test (its logger does not propagate)."""
    messages: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def stream(gateway, key: str):
    return httpx.stream(
        "POST",
        gateway.url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "x", "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    )


@pytest.mark.parametrize("delay", [0, 0.05], ids=["events-together", "events-apart"])
def test_upstream_drop_mid_stream_ends_with_an_error_event(gateway, upstream, api_key, delay):
    """The error event is numbered after every event relayed, however the reads batched them."""
    upstream.drop_after_events = 3
    upstream.event_delay = delay
    make_provider(upstream)
    with stream(gateway, api_key) as response:
        assert response.status_code == 200
        text = response.read().decode()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[0].startswith("event: response.created")
    assert blocks[-1].startswith("event: error\ndata: ")
    error = json.loads(blocks[-1].split("data: ", 1)[1])
    assert error["code"] == "upstream_stream_error" and error["sequence_number"] == len(blocks) - 1
    assert error["param"] is None
    assert re.fullmatch(r"The upstream stream broke: \w+Error\.", error["message"]), error["message"]
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (502, "upstream_stream_error")


@pytest.mark.parametrize(
    ("cut", "code"),
    [
        ("drop", "upstream_stream_error"),  # the upstream closes before its Content-Length is reached
        ("chunked", "upstream_stream_error"),  # a chunked body never terminated
        ("short_length", "upstream_body_incomplete"),  # a Content-Length that ends the JSON half-way
    ],
)
@pytest.mark.parametrize("call", ["create", "create_large", "retrieve"])
def test_a_non_streamed_answer_cut_half_way_never_looks_complete(
    gateway, upstream, api_key, cut, code, call, server_errors
):
    make_provider(upstream)
    client = sdk(gateway, api_key).with_options(max_retries=1)
    stored = client.responses.create(model="gpt-5.5", input="x") if call == "retrieve" else None
    # Over a megabyte the body is not kept whole: its ends say whether it is.
    text = "y" * (3 * 1024 * 1024) if call == "create_large" else "x"
    before = upstream.http_requests
    upstream.cut_json_body = cut
    path = "/v1/responses" + (f"/{stored.id}" if stored else "")
    headers = {"authorization": f"Bearer {api_key}"}
    # httpx: the gateway's chunked body ends without its last chunk, whatever part of the JSON came.
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        if stored:
            httpx.get(gateway.url + path, headers=headers, timeout=20)
        else:
            httpx.post(
                gateway.url + path, json={"model": "gpt-5.5", "input": "x"}, headers=headers, timeout=20
            )
    # The SDK takes it for a broken connection: it tries again, then gives up, never parsing half a body.
    with pytest.raises(openai.APIConnectionError):
        if stored:
            client.responses.retrieve(stored.id)
        else:
            client.responses.create(model="gpt-5.5", input=text)
    assert upstream.http_requests - before == 3
    rows = request_logs(before + 3)[before:]
    assert [(row.status, row.error_code) for row in rows] == [(502, code)] * 3
    # Logged once, by the relay: the server's "returned without completing response" is the intent here.
    assert server_errors == []


def test_failover_does_not_happen_after_the_first_byte(gateway, upstream, upstream_b, api_key):
    upstream.drop_after_events = 2
    make_provider(upstream, name="a", priority=1)
    make_provider(upstream_b, name="b", priority=2)
    with stream(gateway, api_key) as response:
        response.read()
    assert upstream_b.http_requests == 0


def test_client_disconnect_cancels_the_upstream_request(gateway, upstream, api_key):
    upstream.text_deltas = 200
    upstream.event_delay = 0.05
    make_provider(upstream)
    with stream(gateway, api_key) as response:
        for line in response.iter_lines():
            if "output_text.delta" in line:
                break
    deadline = time.monotonic() + 5
    while upstream.open_http_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.open_http_streams == 0, "the upstream stream is still being read"
    (row,) = request_logs(1)
    assert row.status == 499 and row.error_code == "client_disconnected"
