"""A client that leaves mid-turn is the client's doing: its turn is logged as 499, the provider's breaker
does not move, no row is lost (also when the gateway closes the socket with 1009), and no lane task dies
with an exception nobody retrieves."""

import gc
import json
import logging
import socket
import struct
import time

import pytest
from django.core.cache import cache
from websockets.sync.client import connect as ws_connect

from providers.health import breaker_key
from tests.conftest import make_provider, request_logs


def start_turn(gateway, key: str):
    ws = ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {key}"},
        max_size=None,
    )
    ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "long"}))
    while json.loads(ws.recv(timeout=10))["type"] != "response.output_text.delta":
        pass
    return ws


def reset(ws) -> None:
    """Leave without a close frame: a TCP reset."""
    sock = ws.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def oversized(ws) -> None:
    """A frame over the gateway's frame limit: the gateway closes the socket with 1009 mid-turn."""
    ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "x" * 100_000}))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=10)
        except Exception:  # noqa: BLE001 - the close ends the reading
            break
    assert ws.close_code == 1009, ws.close_code
    ws.close()


TURNS = 8


@pytest.mark.parametrize(
    "leave", [reset, oversized, oversized], ids=["client-reset", "closed-1009", "closed-1009-by-server"]
)
@pytest.mark.parametrize("mode", ["auto", "never"], ids=["upstream-websocket", "upstream-http"])
def test_a_client_gone_mid_turn_is_logged_and_blames_no_provider(
    gateway, upstream, api_key, caplog, settings, request, leave, mode
):
    # The consumer closes a frame over its limit with 1009; the server closes one over the process's
    # buffer with 1009 before the consumer hears of it (its sends then fail).
    if "by-server" in request.node.name:
        settings.SLUICE_WS_TOTAL_BUFFER_BYTES = 64 * 1024
    else:
        settings.SLUICE_WS_MAX_FRAME_BYTES = 64 * 1024
    provider = make_provider(upstream, websocket_mode=mode)
    upstream.text_deltas, upstream.event_delay = 100, 0.02
    with caplog.at_level(logging.INFO):
        for _ in range(TURNS):
            leave(start_turn(gateway, api_key))
        assert upstream.wait_for(lambda: upstream.open_ws == 0 and upstream.open_http_streams == 0)
        rows = request_logs(TURNS)
        time.sleep(0.3)
        gc.collect()  # an exception nobody retrieved is reported when its task is collected
    assert len(rows) == TURNS, "every turn keeps its row"
    assert {(row.status, row.error_code) for row in rows} == {(499, "client_disconnected")}
    assert not cache.get(breaker_key(provider.pk)), "a client leaving counts against no provider"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "never retrieved" not in text
    assert "broke mid-turn" not in text and "unexpected error" not in text, text
