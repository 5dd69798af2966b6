"""How uvicorn serves the gateway, one place for ``manage.py serve`` and the test suite's server.

uvicorn's httptools protocol has no deadline for reading a request and no limit on its headers: a client
dripping a byte at a time held a connection for ever, and an 8 MiB header was read, buffered and passed
on. ``GuardedHttpToolsProtocol`` adds both, at the connection, before any application code runs:

- the request line and headers (of an HTTP request or a WebSocket handshake) must arrive within
  ``SLUICE_HEADER_TIMEOUT`` of the connection opening or of the request's first byte; a body within
  ``SLUICE_BODY_TIMEOUT`` of its headers. Late connections are closed.
- at most ``SLUICE_MAX_HEADER_BYTES`` of request line and headers and ``SLUICE_MAX_HEADERS`` header fields:
  more is answered 431 and the connection closed, without the application seeing it.
"""

import asyncio
import logging
from typing import Any

import httptools
from django.conf import settings
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from proxy.server import ended_early
from proxy.server.ws_protocol import BoundedWebSocketProtocol

log = logging.getLogger("sluice.server")


class _Refused(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _deadline: asyncio.TimerHandle | None = None
    _awaiting_headers = True
    _header_bytes = 0
    _header_count = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(settings.SLUICE_HEADER_TIMEOUT, "headers")  # a connection that never speaks

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, what: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("closed a connection from %s: its request %s came too slowly", self.client, what)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._awaiting_headers:
            if self._deadline is None:  # the first byte of a request on a kept-alive connection
                self._arm(settings.SLUICE_HEADER_TIMEOUT, "headers")
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._disarm()
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(str(exc.__context__))
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._awaiting_headers and self._header_bytes > settings.SLUICE_MAX_HEADER_BYTES:
            self._refuse(f"request headers larger than {settings.SLUICE_MAX_HEADER_BYTES} bytes")

    def _refuse(self, why: str) -> None:
        log.info("refused a request from %s: %s", self.client, why)
        self._disarm()
        self._flush_response()
        body = b'{"error": {"type": "invalid_request_error", "code": "request_header_fields_too_large", '
        body += b'"message": "' + why.encode() + b'.", "param": null}}'
        self.transport.write(
            STATUS_LINE[431]
            + b"content-type: application/json\r\nconnection: close\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > settings.SLUICE_MAX_HEADERS:
            raise _Refused(f"more than {settings.SLUICE_MAX_HEADERS} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        if self._header_count > settings.SLUICE_MAX_HEADERS:  # pragma: no cover - refused in on_header
            raise _Refused("too many header fields")
        if self.parser.should_upgrade() and self._should_upgrade():
            self._disarm()  # the WebSocket protocol takes the connection over
        else:
            self._arm(settings.SLUICE_BODY_TIMEOUT, "body")
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and not self.parser.should_upgrade():
            cycle.transport = OneWritePerTurn(cycle.transport, self.loop)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._flush_response()
        super().send_400_response(msg)

    def _flush_response(self) -> None:
        """What the current response wrote goes out before anything the protocol writes itself."""
        transport = self.cycle.transport if self.cycle is not None else None
        if isinstance(transport, OneWritePerTurn):
            transport.flush()


class OneWritePerTurn:
    """The transport of one HTTP response, whose writes made in one turn of the event loop leave in one
    system call: the status line and headers with the first events of a stream, the last events with the
    chunked body's end. A stream still leaves as it comes: each write goes out before the loop waits again.
    Everything else is the connection's transport's own."""

    __slots__ = ("_transport", "_loop", "_chunks")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._chunks:
            self._loop.call_soon(self.flush)
        self._chunks.append(data)

    def flush(self) -> None:
        chunks = self._chunks
        if not chunks:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def server_options() -> dict[str, Any]:
    """uvicorn options shared by ``manage.py serve`` and the tests' server."""
    ended_early.install()
    return {
        "http": GuardedHttpToolsProtocol,
        "ws": BoundedWebSocketProtocol,
        "ws_max_size": settings.SLUICE_WS_MAX_FRAME_BYTES,
        "ws_per_message_deflate": True,
    }
