"""A client that leaves before its first event still gets its row, and nothing is left open upstream."""

import json
import socket
import time

import pytest

from tests.conftest import make_provider, request_logs


def send_and_leave(gateway, key: str, body: dict, wait: float) -> None:
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        time.sleep(wait)


@pytest.mark.parametrize("stream", [True, False])
def test_http_client_gone_before_the_first_event_is_logged_as_499(gateway, upstream, api_key, stream):
    make_provider(upstream)
    upstream.hang = True
    send_and_leave(gateway, api_key, {"model": "gpt-5.5", "input": "hi", "stream": stream}, 0.3)
    assert upstream.wait_for(lambda: upstream.open_http_streams == 0), "upstream request not cancelled"
    (row,) = request_logs(1)
    assert (row.status, row.error_code, row.requested_model) == (499, "client_disconnected", "gpt-5.5")


def test_http_client_gone_after_the_headers_is_logged_once(gateway, upstream, api_key):
    make_provider(upstream)
    upstream.event_delay = 0.2
    send_and_leave(gateway, api_key, {"model": "gpt-5.5", "input": "hi", "stream": True}, 0.1)
    assert upstream.wait_for(lambda: upstream.open_http_streams == 0)
    time.sleep(0.1)
    rows = request_logs(1)
    assert [r.status for r in rows] == [499]
