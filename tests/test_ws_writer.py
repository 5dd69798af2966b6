"""Frames the gateway writes itself are byte for byte what the server's own WebSocket library writes."""

import pytest
from websockets.frames import Frame, Opcode

from proxy.ws_writer import frame_text


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_text_matches_websockets(size):
    payload = ("é" * size).encode()[:size] if size else b""
    assert frame_text(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)
