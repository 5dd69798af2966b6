"""Every way a client WebSocket ends gives back what it held: its open-socket slot and the gauge."""

import base64
import gc
import json
import os
import socket
import struct
import time

import pytest
from websockets.sync.client import connect as ws_connect

from proxy.usage import metrics
from tests.conftest import make_key, make_provider
from tests.helpers import scrape, value

ALLOWANCE = 2


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    head = bytes((0x81, 0x80 | size)) if size < 126 else b"\x81\xfe" + struct.pack("!H", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def frame_and_reset(gateway, key: str, frame: bytes, wait_for_accept: bool) -> None:
    """A handshake and one frame, then a TCP reset (SO_LINGER 0) instead of a close."""
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handshake = (
        "GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    if wait_for_accept:
        sock.sendall(handshake)
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        sock.sendall(masked_text_frame(frame))
    else:
        sock.sendall(handshake + masked_text_frame(frame))
    sock.close()  # with SO_LINGER 0: RST


def open_sockets_gauge() -> float:
    return metrics.client_sockets._value.get()


@pytest.mark.parametrize(
    "frame,wait_for_accept",
    [
        (b"not json", False),  # the accept itself finds the client gone
        (b"not json", True),  # the error frame answering it does
        (json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}).encode(), True),
    ],
    ids=["before-accept", "error-reply", "turn"],
)
def test_a_client_that_resets_gives_back_its_socket_slot(gateway, upstream, caplog, frame, wait_for_accept):
    make_provider(upstream)
    _, raw = make_key(sockets=ALLOWANCE)
    before = open_sockets_gauge()
    for _ in range(ALLOWANCE * 3):
        frame_and_reset(gateway, raw, frame, wait_for_accept)
    deadline = time.monotonic() + 10
    while open_sockets_gauge() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    url = gateway.url.replace("http", "ws") + "/v1/responses"
    held = []
    try:
        deadline = time.monotonic() + 10
        while len(held) < ALLOWANCE:  # the slots come back as soon as the server has seen the resets
            try:
                held.append(ws_connect(url, additional_headers={"authorization": f"Bearer {raw}"}))
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        deadline = time.monotonic() + 5  # the gauge moves just after the handshake answer is written
        while open_sockets_gauge() - before != ALLOWANCE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert open_sockets_gauge() - before == ALLOWANCE
    finally:
        for ws in held:
            ws.close()
    deadline = time.monotonic() + 10
    while open_sockets_gauge() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(scrape(gateway), "sluice_client_websockets_open") == before == 0
    gc.collect()  # a slot left to the admission's finaliser was leaked: it comes back only by chance
    leaked = [r for r in caplog.records if "never released" in r.getMessage()]
    assert not leaked, "the socket slot was given back by the garbage collector, not by the consumer"
