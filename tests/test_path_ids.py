"""A response id in the path can never steer the upstream request elsewhere: ids are checked against the
shape the service issues, and anything else is a 400 before any upstream contact.

HTTP clients normalise ``..`` and escape ``?`` themselves, so these requests are written on a raw socket,
as an attacker would send them."""

import json
import socket

import pytest

from tests.conftest import make_provider, sdk


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def raw_request(gateway, key: str, method: str, target: str) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1/responses/../input_items"),
        ("GET", "/v1/responses/..%2F..%2Ffiles/input_items"),
        ("GET", "/v1/responses/resp_abc%3Flimit=1/input_items"),
        ("GET", "/v1/responses/resp_abc%23frag"),
        ("DELETE", "/v1/responses/.."),
        ("POST", "/v1/responses/resp%2E%2E/cancel"),
        ("GET", "/v1/responses/resp_%25%32%65/input_items"),
    ],
)
def test_a_path_id_that_is_not_a_response_id_is_refused_before_any_upstream_call(
    gateway, upstream, api_key, method, target
):
    make_provider(upstream)
    status, body = raw_request(gateway, api_key, method, target)
    assert status in (400, 404), body
    assert body["error"]["code"] in ("invalid_response_id", "not_found")
    assert upstream.requests == []


def test_dot_dot_id_is_a_400_naming_the_parameter(gateway, upstream, api_key):
    make_provider(upstream)
    status, body = raw_request(gateway, api_key, "GET", "/v1/responses/../input_items")
    assert status == 400
    assert body["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_response_id",
        "message": "The response id in the path is not valid.",
        "param": "response_id",
    }
    assert upstream.requests == []


def test_a_valid_id_with_a_query_reaches_only_its_own_path(gateway, upstream, api_key):
    make_provider(upstream)
    rid = sdk(gateway, api_key).responses.create(model="gpt-5.5", input="hi").id  # one of the key's own
    upstream.requests.clear()
    status, _ = raw_request(gateway, api_key, "GET", f"/v1/responses/{rid}/input_items?limit=2&order=asc")
    assert status == 200
    assert [(r.method, r.path) for r in upstream.requests] == [("GET", f"/v1/responses/{rid}/input_items")]
