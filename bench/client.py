"""The load generator's connections: HTTP/1.1 SSE with keep-alive, and WebSocket, on raw asyncio.

Each turn is timed from the moment its request is written to the arrival of its first event and of its
terminal event, stamped in ``data_received`` so the load generator's own scheduling adds as little as it
can. Events are counted but not parsed: SSE blocks by their blank line, WebSocket messages by frame, and
only the ``type`` of each is read.
"""

import asyncio
from dataclasses import dataclass
from time import perf_counter

from bench import wsframe

TERMINAL_TYPES = frozenset({b"response.completed", b"response.failed", b"response.incomplete", b"error"})
SSE_TERMINALS = tuple(b"event: " + kind + b"\n" for kind in TERMINAL_TYPES)


@dataclass(slots=True)
class Turn:
    """One request and its answer; times in seconds from the request's write."""

    first_event: float
    terminal: float
    events: int
    ok: bool
    response_id: str = ""


class ConnectionLost(Exception):
    pass


class _Base(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiter: asyncio.Future[Turn] | None = None
        self._sent_at = 0.0
        self._first_at = 0.0
        self._terminal_at = 0.0
        self._events = 0
        self._ok = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionLost(repr(exc)))

    def _start(self, request: bytes) -> asyncio.Future[Turn]:
        if self.closed or self.transport is None:
            raise ConnectionLost("connection closed before the request")
        self._waiter = asyncio.get_running_loop().create_future()
        self._first_at = self._terminal_at = 0.0
        self._events = 0
        self._ok = False
        self._sent_at = perf_counter()
        self.transport.write(request)
        return self._waiter

    def _finish(self, response_id: str = "") -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        sent = self._sent_at
        first = self._first_at or self._terminal_at or perf_counter()
        terminal = self._terminal_at or perf_counter()
        waiter.set_result(Turn(first - sent, terminal - sent, self._events, self._ok, response_id))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SseConnection(_Base):
    """HTTP/1.1 keep-alive connection answering SSE; one request in flight at a time."""

    HEAD, SIZE, DATA, BODY = range(4)

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()
        self._state = self.HEAD
        self._remaining = 0
        self._chunked = False
        self._status = 0
        self._after_newline = False

    @classmethod
    async def open(cls, host: str, port: int) -> "SseConnection":
        _transport, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        return protocol

    async def turn(self, request: bytes) -> Turn:
        self._state = self.HEAD
        self._after_newline = False
        return await self._start(request)

    def _on_body(self, piece: bytes, now: float) -> None:
        blocks = piece.count(b"\n\n") + (self._after_newline and piece[:1] == b"\n")
        self._after_newline = piece[-1:] == b"\n"
        if not blocks:
            return
        if not self._events:
            self._first_at = now
        self._events += blocks
        if not self._terminal_at and self._status == 200:
            for marker in SSE_TERMINALS:
                if marker in piece:
                    self._terminal_at = now
                    self._ok = marker == b"event: response.completed\n"
                    break

    def data_received(self, data: bytes) -> None:
        now = perf_counter()
        buffer = self._buffer
        buffer += data
        pos = 0
        while True:
            state = self._state
            if state == self.HEAD:
                end = buffer.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                head = bytes(buffer[pos:end]).lower()
                pos = end + 4
                self._status = int(head[9:12])
                self._chunked = b"transfer-encoding: chunked" in head
                if self._chunked:
                    self._state = self.SIZE
                else:
                    marker = head.find(b"content-length:")
                    self._remaining = (
                        int(head[marker + 15 : head.find(b"\r\n", marker)]) if marker >= 0 else 0
                    )
                    self._state = self.BODY
            elif state == self.SIZE:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(buffer[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                if size == 0:
                    self._remaining = 2  # the CRLF after the last chunk (no trailers)
                    self._state = self.BODY
                else:
                    self._remaining = size
                    self._state = self.DATA
            elif state == self.DATA:
                if len(buffer) - pos < self._remaining + 2:
                    break
                self._on_body(bytes(buffer[pos : pos + self._remaining]), now)
                pos += self._remaining + 2
                self._state = self.SIZE
            else:  # BODY: a fixed-length body, or the end of a chunked one
                if len(buffer) - pos < self._remaining:
                    break
                if not self._chunked:
                    self._on_body(bytes(buffer[pos : pos + self._remaining]), now)
                pos += self._remaining
                self._state = self.HEAD
                self._finish()
        del buffer[:pos]


class WsConnection(_Base):
    """A client WebSocket that runs one turn at a time and answers the server's pings."""

    def __init__(self) -> None:
        super().__init__()
        self._frames: wsframe.FrameReader | None = None
        self._head = bytearray()
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._accept = b""

    @classmethod
    async def open(cls, host: str, port: int, path: str, headers: dict[str, str]) -> "WsConnection":
        _transport, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        key = wsframe.new_key()
        lines = [
            f"GET {path} HTTP/1.1",
            f"host: {host}:{port}",
            "upgrade: websocket",
            "connection: Upgrade",
            f"sec-websocket-key: {key.decode()}",
            "sec-websocket-version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        protocol.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await protocol._handshake
        if protocol._accept != wsframe.accept_key(key):
            protocol.close()
            raise ConnectionLost("bad Sec-WebSocket-Accept")
        return protocol

    async def turn(self, frame_text: bytes) -> Turn:
        return await self._start(wsframe.encode(wsframe.TEXT, frame_text, masked=True))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(ConnectionLost(repr(exc)))
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = perf_counter()
        if self._frames is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._head[:end]).lower()
            if not head.startswith(b"http/1.1 101"):
                self._handshake.set_exception(ConnectionLost(head.split(b"\r\n", 1)[0].decode()))
                self.close()
                return
            marker = head.find(b"sec-websocket-accept:")
            self._accept = bytes(self._head[marker + 21 : self._head.find(b"\r\n", marker)]).strip()
            data = bytes(self._head[end + 4 :])
            self._frames = wsframe.FrameReader()
            self._handshake.set_result(None)
        for frame in self._frames.feed(data):
            if frame.opcode == wsframe.TEXT:
                self._on_message(frame.payload, now)
            elif frame.opcode == wsframe.PING:
                self.transport.write(wsframe.encode(wsframe.PONG, frame.payload, masked=True))  # type: ignore[union-attr]
            elif frame.opcode == wsframe.CLOSE:
                self.close()

    def _on_message(self, payload: bytes, now: float) -> None:
        if not self._events:
            self._first_at = now
        self._events += 1
        kind = payload[9 : payload.find(b'"', 9)] if payload.startswith(b'{"type":"') else b""
        if kind in TERMINAL_TYPES:
            self._terminal_at = now
            self._ok = kind == b"response.completed"
            response_id = ""
            if self._ok:
                start = payload.find(b'"id":"', payload.find(b'"response":')) + 6
                response_id = payload[start : payload.find(b'"', start)].decode()
            self._finish(response_id)
