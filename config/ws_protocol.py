"""uvicorn's sans-I/O WebSocket protocol with bounds on what one client, and all of them, make it hold.

uvicorn (``websockets-sansio``) answers every ping at once, whether or not the client reads its pongs, and
inflates every compressed message that arrived in one read before the application has taken any: a client
that never reads grew the write buffer without bound, and one read of 30 KB frames inflated to hundreds of
MiB. This subclass:

- feeds what arrives to the parser in slices and holds the rest back while an inflated message waits for
  the application: per connection, at most one message (``SLUICE_WS_MAX_FRAME_BYTES``) is inflated ahead;
- counts the inflated bytes waiting for the application across all connections; a message that would
  take the total over ``SLUICE_WS_TOTAL_BUFFER_BYTES`` closes its connection with 1009;
- answers no ping while the client leaves earlier output unread (the transport's write buffer is over
  its high-water mark, the point where the application's own sends wait), and closes with 1008 a
  connection that sends more than ``MAX_UNANSWERED_PINGS`` such pings.
"""

import logging
from typing import Any

from django.conf import settings
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("sluice.ws")

SLICE = 16 * 1024
MAX_UNANSWERED_PINGS = 100  # pings received while the client leaves earlier output unread
_waiting_total = 0  # inflated bytes queued for the application, all connections of this process


def waiting_total() -> int:
    """Inflated client bytes this process holds for its applications right now (diagnostics, tests)."""
    return _waiting_total


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backlog = memoryview(b"")
        self._waiting: list[int] = []  # sizes of the messages queued for the application, oldest first
        self._unanswered = 0

    def data_received(self, data: bytes) -> None:
        self._backlog = memoryview(bytes(self._backlog) + data) if self._backlog else memoryview(data)
        self._feed()

    def _feed(self) -> None:
        while self._backlog and not self._waiting and not self.transport.is_closing():
            chunk, self._backlog = self._backlog[:SLICE], self._backlog[SLICE:]
            self.conn.receive_data(bytes(chunk))
            if self.conn.parser_exc is not None:
                self.handle_parser_exception()
                return
            self.handle_events()
        if self._backlog and not self.read_paused and not self.transport.is_closing():
            self.read_paused = True  # resumed by receive() once the application took its message
            self.transport.pause_reading()

    def send_receive_event_to_app(self) -> None:
        global _waiting_total
        size = sum(len(frame) for frame in self.frames)
        if self.close_sent:
            super().send_receive_event_to_app()
            return
        if _waiting_total + size > settings.SLUICE_WS_TOTAL_BUFFER_BYTES:
            self.frames = []
            log.warning(
                "closed the WebSocket of %s: a %d-byte message with %d bytes already waiting in the process",
                self.client,
                size,
                _waiting_total,
            )
            self._fail(1009, "the gateway is holding too much data; retry later")
            return
        _waiting_total += size
        self._waiting.append(size)
        super().send_receive_event_to_app()

    async def receive(self) -> Any:
        message = await super().receive()
        if message["type"] == "websocket.receive" and self._waiting:
            self._release(self._waiting.pop(0))
            if self._backlog and not self._waiting:
                self._feed()
        return message

    def _release(self, size: int) -> None:
        global _waiting_total
        _waiting_total -= size

    def on_task_complete(self, task: Any) -> None:
        for size in self._waiting:  # messages the application will never take
            self._release(size)
        self._waiting.clear()
        super().on_task_complete(task)

    def handle_ping(self) -> None:
        if self.writable.is_set():
            self._unanswered = 0
            super().handle_ping()
            return
        # The client is not reading what it was sent: answer only a later ping (RFC 6455 allows answering
        # the most recent one) instead of piling pongs up, and close a client that keeps pinging.
        self.conn.data_to_send()
        self._unanswered += 1
        if self._unanswered > MAX_UNANSWERED_PINGS:
            log.warning("closed the WebSocket of %s: it sends pings and does not read the pongs", self.client)
            self._fail(1008, "pings sent faster than pongs are read")

    def _fail(self, code: int, reason: str) -> None:
        self.conn.fail(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._backlog = memoryview(b"")
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if not self.writable.is_set():
            self.transport.abort()  # the client does not read: the close frame would never leave
        else:
            self.transport.close()
