"""Just enough of RFC 6455 for the benchmark's own ends: the handshake key, frames out, frames in.

Both the fake upstream and the load generator speak WebSocket through this module instead of a full
library, so that neither costs more CPU per message than the gateway it measures.
"""

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value answering a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    if not payload:
        return payload
    size = len(payload)
    repeated = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")


def encode(opcode: int, payload: bytes, masked: bool) -> bytes:
    """One final frame; clients must mask, servers must not."""
    size = len(payload)
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if masked:
        key = os.urandom(4)
        return head + key + mask(payload, key)
    return head + payload


@dataclass(slots=True)
class Frame:
    opcode: int
    payload: bytes


class FrameReader:
    """Incremental frame parser; fragmented messages are joined (opcode of the first fragment)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            size = second & 0x7F
            header = 2
            if size == 126:
                if end - pos < 4:
                    break
                size = struct.unpack_from("!H", buffer, pos + 2)[0]
                header = 4
            elif size == 127:
                if end - pos < 10:
                    break
                size = struct.unpack_from("!Q", buffer, pos + 2)[0]
                header = 10
            key = b""
            if second & 0x80:
                if end - pos < header + 4:
                    break
                key = bytes(buffer[pos + header : pos + header + 4])
                header += 4
            if end - pos < header + size:
                break
            payload = bytes(buffer[pos + header : pos + header + size])
            pos += header + size
            if key:
                payload = mask(payload, key)
            opcode = first & 0x0F
            if opcode >= CLOSE:  # control frames are never fragmented
                frames.append(Frame(opcode, payload))
            elif not first & 0x80:
                if opcode:
                    self._fragment_opcode = opcode
                self._fragments.append(payload)
            elif opcode == 0:
                self._fragments.append(payload)
                frames.append(Frame(self._fragment_opcode, b"".join(self._fragments)))
                self._fragments = []
            else:
                frames.append(Frame(opcode, payload))
        del buffer[:pos]
        return frames
