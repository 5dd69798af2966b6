"""uvicorn's sans-I/O WebSocket protocol with bounds on what one client, and all of them, make it hold.

uvicorn (``websockets-sansio``) answers every ping at once, whether or not the client reads its pongs, and
inflates every compressed message that arrived in one read before the application has taken any: a client
that never reads grew the write buffer without bound, and one read of 30 KB frames inflated to hundreds of
MiB. This subclass:

- feeds what arrives to the parser in slices and holds the rest back while an inflated message waits for
  the application: per connection, at most one message (``SLUICE_WS_MAX_FRAME_BYTES``) is inflated ahead;
- counts the inflated bytes held for the application across all connections, from the first fragment
  until the application asks for its next message (its handling of this one done), and lets the
  decompressor inflate no more than what is left of ``SLUICE_WS_TOTAL_BUFFER_BYTES``: a message that
  would take the total over it closes its connection with 1009 before it is inflated, so many sockets
  inflating at once hold no more than the total together;
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
_waiting_total = 0  # inflated bytes held for the application (queued, or being handled), all connections
_partial_total = 0  # inflated fragments of messages not yet whole, all connections


def waiting_total() -> int:
    """Inflated client bytes this process holds for its applications right now (diagnostics, tests)."""
    return _waiting_total + _partial_total


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backlog = memoryview(b"")
        self._waiting: list[int] = []  # sizes of the messages queued for the application, oldest first
        self._taken = 0  # size of the message the application took and is handling
        self._partial = 0  # inflated bytes of this connection's message not yet whole
        self._unanswered = 0

    def data_received(self, data: bytes) -> None:
        self._backlog = memoryview(bytes(self._backlog) + data) if self._backlog else memoryview(data)
        self._feed()

    def _feed(self) -> None:
        while self._backlog and not self._waiting and not self.transport.is_closing():
            chunk, self._backlog = self._backlog[:SLICE], self._backlog[SLICE:]
            limited = self._limit_inflation()
            self.conn.receive_data(bytes(chunk))
            if self.conn.parser_exc is not None:
                if limited:
                    log.warning(
                        "closed the WebSocket of %s: its message would take the process over %d bytes held",
                        self.client,
                        settings.SLUICE_WS_TOTAL_BUFFER_BYTES,
                    )
                self._count_partial(0)
                # The exception stays on the connection; its traceback would keep the inflated data.
                self.conn.parser_exc.__traceback__ = None
                self.handle_parser_exception()
                return
            self.handle_events()
            self._count_partial(sum(len(frame) for frame in self.frames))
        if self._backlog and not self.read_paused and not self.transport.is_closing():
            self.read_paused = True  # resumed by receive() once the application took its message
            self.transport.pause_reading()

    # websockets' parser keeps the last frame it parsed until the next one arrives: its data is let go
    # here once taken, or every socket would hold its last message for as long as it stays quiet.
    def handle_text(self, event: Any) -> None:
        super().handle_text(event)
        event.data = b""

    def handle_bytes(self, event: Any) -> None:
        super().handle_bytes(event)
        event.data = b""

    def handle_cont(self, event: Any) -> None:
        super().handle_cont(event)
        event.data = b""

    def _limit_inflation(self) -> bool:
        """Let the parser inflate at most what the process may still hold (this connection's own
        fragments included); True when that, not the frame limit, is the bound."""
        room = settings.SLUICE_WS_TOTAL_BUFFER_BYTES - _waiting_total - _partial_total + self._partial
        limit = max(1, min(settings.SLUICE_WS_MAX_FRAME_BYTES, room))  # 0 would mean no limit to zlib
        self.conn.max_size = limit  # websockets 15 reads this per frame,
        self.conn.max_message_size = limit  # 16 and later this one
        return limit < settings.SLUICE_WS_MAX_FRAME_BYTES

    def _count_partial(self, size: int) -> None:
        global _partial_total
        _partial_total += size - self._partial
        self._partial = size

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
        if self._taken:  # the application asks for the next message: it is done with the last one
            self._release(self._taken)
            self._taken = 0
        message = await super().receive()
        if message["type"] == "websocket.receive" and self._waiting:
            self._taken = self._waiting.pop(0)
            if self._backlog and not self._waiting:
                self._feed()
        return message

    def _release(self, size: int) -> None:
        global _waiting_total
        _waiting_total -= size

    def on_task_complete(self, task: Any) -> None:
        for size in [*self._waiting, self._taken]:  # messages the application will never take or finish
            self._release(size)
        self._waiting.clear()
        self._taken = 0
        self._count_partial(0)
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
