"""The provider's key is scrubbed from every string the gateway forwards from an upstream's answer (an
error's code, type, param, message and nested fields, a non-streamed body), also when the upstream writes
it with JSON ``\\u`` escapes, and from every error code the request log stores."""

import json
import logging

import httpx
import pytest

from tests.conftest import make_provider, request_logs
from tests.test_secrets import KEYS, assert_nowhere, ws_first_terminal


def escaped(text: str) -> str:
    """Every character as a JSON \\u escape: the same string to a JSON reader, other bytes on the wire."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


def error_body(written: str) -> bytes:
    return (
        (
            '{"error": {"message": "Incorrect API key provided: KEY.", "code": "KEY", "type": "bad_KEY",'
            ' "param": {"header": "KEY", "tried": ["KEY"]}}}'
        )
        .replace("KEY", written)
        .encode()
    )


def response_body(written: str) -> bytes:
    """A failed response whose error code quotes the key (the code goes to the request log)."""
    return (
        (
            '{"id": "resp_scrub1", "object": "response", "status": "failed", "model": "gpt-5.5", "output": '
            '[{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": '
            '[{"type": "output_text", "text": "the key is KEY", "annotations": []}]}], '
            '"error": {"code": "KEY", "message": "failed"}, '
            '"usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}'
        )
        .replace("KEY", written)
        .encode()
    )


def seen_everywhere(text: str) -> str:
    """The text as sent, and as any JSON reader of it sees it (escapes decoded)."""
    decoded = []
    for line in text.splitlines():
        try:
            decoded.append(json.dumps(json.loads(line), ensure_ascii=False))
        except ValueError:
            pass
    return text + "\n" + "\n".join(decoded)


@pytest.mark.parametrize("provider_key", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize("writing", ["plain", "escaped"])
@pytest.mark.parametrize(
    "status,client",
    [(400, "http"), (401, "http"), (400, "websocket"), (200, "http")],
    ids=["error-400-http", "error-401-http", "error-400-websocket", "ok-200-http"],
)
def test_the_provider_key_is_scrubbed_from_every_forwarded_field(
    gateway, upstream, api_key, caplog, provider_key, writing, status, client
):
    written = provider_key if writing == "plain" else escaped(provider_key)
    upstream.api_key = provider_key
    upstream.http_fail_status = status if status != 200 else None
    upstream.http_raw_body = response_body(written) if status == 200 else error_body(written)
    make_provider(upstream, websocket_mode="never")
    with caplog.at_level(logging.DEBUG):
        if client == "http":
            body = httpx.post(
                gateway.url + "/v1/responses",
                json={"model": "gpt-5.5", "input": "x"},
                headers={"authorization": f"Bearer {api_key}"},
                timeout=20,
            ).text
        else:
            body = ws_first_terminal(gateway, api_key, '{"type": "response.create", "model": "gpt-5.5"}')
        rows = request_logs(1)
    assert ("the key is" if status == 200 else "Incorrect API key provided") in body, body
    assert_nowhere(provider_key, seen_everywhere(body), caplog, rows)
    assert all(provider_key[:12] not in (row.error_code or "") for row in rows)
    assert all(row.error_code for row in rows), "the code is stored, scrubbed"


@pytest.mark.parametrize("provider_key", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize("path", ["sse", "websocket"])
def test_a_streamed_error_with_the_key_escaped_is_scrubbed(
    gateway, upstream, api_key, caplog, provider_key, path
):
    upstream.api_key = provider_key
    upstream.escape_key = True
    upstream.error_event = {
        "type": "error",
        "error": {"type": f"t_{provider_key}", "code": provider_key, "message": f"Bad key {provider_key}."},
    }
    make_provider(upstream, websocket_mode="auto" if path == "websocket" else "never")
    with caplog.at_level(logging.DEBUG):
        if path == "sse":
            body = httpx.post(
                gateway.url + "/v1/responses",
                json={"model": "gpt-5.5", "input": "x", "stream": True},
                headers={"authorization": f"Bearer {api_key}"},
                timeout=20,
            ).text
            body = "\n".join(line.removeprefix("data: ") for line in body.splitlines())
        else:
            body = ws_first_terminal(gateway, api_key, '{"type": "response.create", "model": "gpt-5.5"}')
        rows = request_logs(1)
    assert "Bad key" in body and "\\u" not in body.split("Bad key")[1][:12], body
    assert_nowhere(provider_key, seen_everywhere(body), caplog, rows)
    assert rows[0].error_code, "the code is stored, scrubbed"
