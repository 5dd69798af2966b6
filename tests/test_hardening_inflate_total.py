"""Compressed messages that inflate a thousandfold (permessage-deflate bombs) are bounded for the whole
process, not only per socket: many sockets inflating at once stay within SLUICE_WS_TOTAL_BUFFER_BYTES."""

import base64
import os
import socket
import struct
import time
import tracemalloc
import zlib

from tests.conftest import make_provider

MIB = 1024 * 1024
SOCKETS = 16


def bomb_frame(size: int, turn: bool) -> bytes:
    """One masked, compressed text frame (RSV1) whose payload inflates to ``size`` bytes: not JSON, or a
    turn whose input is that long."""
    if turn:
        head = b'{"type": "response.create", "model": "gpt-5.5", "store": false, "input": "'
        message = head + b"a" * (size - len(head) - 2) + b'"}'
    else:
        message = b" " * (size - 1) + b"x"
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    payload = data.removesuffix(b"\x00\x00\xff\xff")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b"\xc1\xff" + struct.pack("!Q", len(payload)) + mask + masked


def open_deflate_socket(gateway, key: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.settimeout(30)
    sock.sendall(
        (
            "GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Extensions: permessage-deflate\r\nAuthorization: Bearer {key}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head.lower(), head
    return sock


def answered(sock: socket.socket) -> bytes:
    """The gateway's first answer to the bomb: an error frame (not JSON), or a close (1009)."""
    sock.settimeout(20)
    try:
        return sock.recv(65536)
    except (TimeoutError, ConnectionError):
        return b""


def test_bombs_on_many_sockets_stay_within_the_process_total(gateway, upstream, api_key, settings):
    make_provider(upstream)
    settings.SLUICE_WS_TOTAL_BUFFER_BYTES = 48 * MIB
    frame = bomb_frame(30 * MIB, turn=False)
    assert len(frame) < 64 * 1024
    sockets = [open_deflate_socket(gateway, api_key) for _ in range(SOCKETS)]
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for sock in sockets:
            sock.sendall(frame)
        replies = [answered(sock) for sock in sockets]
        time.sleep(0.2)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
        for sock in sockets:
            sock.close()
    assert all(replies), ("every socket got an answer (an error frame, or a close)", replies)
    # The total, plus one message's worth for the text decoded from the one being handed over (before
    # the limit counted what was held per socket only: 123 MiB here).
    assert peak < 48 * MIB + 32 * MIB, f"peak {peak / MIB:.0f} MiB"


def test_turns_inflated_on_many_sockets_stay_within_the_process_total(gateway, upstream, api_key, settings):
    """Turns that were bombs: the frames the lanes hold (queued or running) count against the total too,
    so with room for one 30 MiB turn in 48 MiB, one runs and the others are refused or closed."""
    make_provider(upstream)
    upstream.hang = True  # the admitted turn holds its frame while the others arrive
    settings.SLUICE_WS_TOTAL_BUFFER_BYTES = 48 * MIB
    frame = bomb_frame(30 * MIB, turn=True)
    sockets = [open_deflate_socket(gateway, api_key) for _ in range(SOCKETS)]
    try:
        replies = []
        for index, sock in enumerate(sockets):  # one after the other: each inflates with the server idle
            sock.sendall(frame)
            if index:
                replies.append(answered(sock))
            else:
                time.sleep(0.5)

        def turns() -> int:
            return sum(1 for r in upstream.requests if r.transport == "websocket" and r.body.get("input"))

        upstream.wait_for(lambda: turns() > 0, timeout=20)
        time.sleep(0.5)
        held = turns()
    finally:
        for sock in sockets:
            sock.close()
    assert all(replies), "every other socket got an answer: an error frame, or a close"
    assert held == 1, f"{held} turns of 30 MiB held at once"
