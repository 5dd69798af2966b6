"""Writing several events to a client socket in one system call where the ASGI server allows it.

ASGI sends one message per ``websocket.send``, and uvicorn writes each to the socket at once: an event
costs a system call, where SSE relays the events that arrived together in one write. Under uvicorn's
``websockets-sansio`` protocol the frames of a batch are framed by the same sans-I/O connection the
server uses and written together, exactly as the server would have written them one by one; anything
else (another server, a paused transport, a closing socket) takes the ordinary ASGI path.
"""

from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]

# Batches written in one call since start: the tests check that the served configuration takes this path.
batches_written = 0


def server_protocol(send: Send) -> Any | None:
    """The uvicorn sans-I/O protocol (or a subclass, such as the bounded one ``manage.py serve`` uses)
    behind an ASGI ``send``, when that is what serves the socket."""
    try:
        # Imported here: optional (a uvicorn without the websockets package has no such protocol).
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return None
    protocol = getattr(send, "__self__", None)
    return protocol if isinstance(protocol, WebSocketsSansIOProtocol) else None


def write_together(protocol: Any, texts: list[str]) -> bool:
    """Frame ``texts`` and write them in one call; False when the server must take them one by one
    (its transport paused for backpressure, the socket closing or not yet accepted)."""
    global batches_written
    if (
        protocol.disconnected
        or protocol.close_sent
        or not protocol.handshake_complete
        or protocol.initial_response is not None
        or not protocol.writable.is_set()
        or protocol.transport.is_closing()
    ):
        return False
    connection = protocol.conn
    if connection.extensions:  # permessage-deflate (Codex offers it): the connection compresses
        for text in texts:
            connection.send_text(text.encode())
        protocol.transport.write(b"".join(connection.data_to_send()))
    else:
        protocol.transport.write(b"".join([frame_text(text.encode()) for text in texts]))
    batches_written += 1
    return True


def frame_text(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 5.2), as a server sends it without extensions."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload
