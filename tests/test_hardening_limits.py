"""Read deadlines and header limits at the connection: slow clients are cut off, huge headers refused."""

import json
import socket
import time

import pytest

from tests.conftest import make_provider


@pytest.fixture
def short_deadlines(settings):
    settings.SLUICE_HEADER_TIMEOUT = 0.5
    settings.SLUICE_BODY_TIMEOUT = 0.5


def open_socket(gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    return sock


def closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> float:
    """Send ``drip`` a byte every 50 ms until the server closes the connection; how long that took."""
    started = time.monotonic()
    sock.settimeout(0.05)
    for byte in drip or b"\0" * 10_000:
        assert time.monotonic() - started < seconds, "still open"
        try:
            if drip:
                sock.send(bytes([byte]))
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    raise AssertionError("drip ended before the server closed the connection")


def test_a_connection_that_sends_nothing_is_closed(gateway, short_deadlines):
    with open_socket(gateway) as sock:
        assert closed_within(sock, 3) < 2


def test_headers_dripped_a_byte_at_a_time_are_cut_off(gateway, api_key, short_deadlines):
    request = (
        f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n" + "X-A: b\r\n" * 500
    )
    with open_socket(gateway) as sock:
        assert closed_within(sock, 3, request.encode()) < 2


def test_a_websocket_handshake_dripped_is_cut_off(gateway, api_key, short_deadlines):
    request = (
        "GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + "X-A: b\r\n" * 500
    )
    with open_socket(gateway) as sock:
        assert closed_within(sock, 3, request.encode()) < 2


def test_a_body_dripped_a_byte_at_a_time_is_cut_off(gateway, upstream, api_key, short_deadlines):
    make_provider(upstream)
    body = json.dumps({"model": "gpt-5.5", "input": "x" * 1000}).encode()
    head = (
        f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with open_socket(gateway) as sock:
        sock.sendall(head)
        assert closed_within(sock, 3, body) < 2
    assert upstream.http_requests == 0


def send_raw(gateway, request: bytes) -> bytes:
    with open_socket(gateway) as sock:
        try:
            sock.sendall(request)
        except (ConnectionResetError, BrokenPipeError):
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data


@pytest.mark.parametrize(
    "extra",
    [b"X-Big: " + b"a" * (8 * 1024 * 1024) + b"\r\n", b"".join(b"X-%d: v\r\n" % i for i in range(200))],
    ids=["8 MiB header", "200 headers"],
)
def test_oversized_headers_are_refused_and_never_forwarded(gateway, upstream, api_key, extra):
    make_provider(upstream)
    body = b'{"model": "gpt-5.5", "input": "hi"}'
    request = (
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + api_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )
    answer = send_raw(gateway, request)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"request_header_fields_too_large" in answer
    assert upstream.http_requests == 0


def test_ordinary_requests_on_a_kept_alive_connection_still_work(gateway, upstream, api_key, short_deadlines):
    import httpx

    make_provider(upstream)
    streams = set()
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {api_key}"}) as client:
        for _ in range(3):
            response = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi", "stream": True})
            assert response.status_code == 200 and "response.completed" in response.text
            streams.add(id(response.extensions["network_stream"]))
            time.sleep(0.3)
    assert len(streams) == 1, "the connection was not kept alive"
