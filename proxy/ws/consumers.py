"""WebSocket ingress on /v1/responses: translates ASGI events into calls on a ``Session``."""

import logging
from typing import Any

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer
from django.conf import settings

from proxy.common.wire import WireError
from proxy.governance import limits
from proxy.governance.auth import PROTOCOL_PREFIX, authenticate, presented_key
from proxy.governance.refusals import for_client, unauthenticated
from proxy.governance.revocation import key_group
from proxy.server import lifecycle
from proxy.turn import Turn
from proxy.turn import sticky_token as turn_state
from proxy.usage import metrics, tracing
from proxy.ws.connection import Connection
from proxy.ws.writer import server_protocol, write_together
from settings_app.runtime import system_settings

log = logging.getLogger("sluice.ws")


async def deny(
    scope: dict[str, Any],
    send: Any,
    status: int,
    error: WireError,
    endpoint: str = "responses",
    client: Any = None,
) -> None:
    """Refuse an upgrade with a real HTTP status where the server supports it (uvicorn, hypercorn);
    daphne can only refuse with 403."""
    Turn.refusal(error, scope=scope, client=client, transport="websocket", endpoint=endpoint)
    shaped = for_client(error, request_headers(scope))  # the row above keeps the refusal's own status
    if shaped is not error:
        error, status = shaped, shaped.status
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(b"content-type", b"application/json")]
        headers += [(k.encode(), v.encode()) for k, v in getattr(error, "headers", {}).items()]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": error.http_body()})
    else:
        await send({"type": "websocket.close", "code": 1008})


def request_headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


def accept_headers(state: turn_state.TurnState) -> list[tuple[bytes, bytes]]:
    """What Codex reads from the handshake: the gateway's frame limit, its sticky-routing token, and what
    the provider said about itself when it last served this token (model, catalogue version)."""
    headers = {
        "x-codex-websocket-max-message-bytes": str(settings.SLUICE_WS_MAX_FRAME_BYTES),
        turn_state.HEADER: state.token,
        **state.headers,
    }
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class ResponsesConsumer(AsyncConsumer):
    session: Connection | None = None
    protocol: Any = None  # the server's protocol object, when it can write a batch in one call
    closed = False
    admission: limits.Admission = limits.UNLIMITED  # the open-socket slot, given back on disconnect
    released = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # However the consumer ends (a send that found the client gone, an error, a cancelled task), what
        # the socket held is given back: uvicorn drops a ClientDisconnected raised out of the application,
        # and websocket_disconnect would then never run.
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.release()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every message, a thread hop per frame; this
        # consumer never touches the database from the event loop (configuration lives in snapshots).
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def deny(self, status: int, error: WireError, client: Any = None) -> None:
        await deny(self.scope, self.send, status, error, client=client)
        self.closed = True

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.scope["headers"]}
        offered = self.scope.get("subprotocols") or []
        if lifecycle.draining():  # the client retries its handshake, through the balancer to another node
            await self.deny(
                503,
                WireError(503, "server_restarting", "This node is restarting; retry.", None, "server_error"),
            )
            return
        if not (await system_settings.aget()).client_websockets:
            await self.deny(
                426,
                WireError(
                    426, "websockets_disabled", "WebSocket mode is turned off on this gateway; use HTTP."
                ),
            )
            return
        raw_key = presented_key(headers, offered)
        client = await authenticate(raw_key)
        if client is None:
            await self.deny(401, await unauthenticated(raw_key))
            return
        try:
            self.admission = await limits.admit_socket(client)
        except WireError as error:
            await self.deny(error.status, error, client)  # one request-log row, with key and team
            return
        if self.channel_layer is not None:
            await self.channel_layer.group_add(key_group(client.key_id), self.channel_name)
            self.groups = [key_group(client.key_id)]
        # Never echo the subprotocol that carries the key; pick another one the client offered, if any.
        subprotocol = next((p for p in offered if not p.startswith(PROTOCOL_PREFIX)), None)
        state = await turn_state.resume(headers.get(turn_state.HEADER), client.key_id)
        await self.send(
            {"type": "websocket.accept", "subprotocol": subprotocol, "headers": accept_headers(state)}
        )
        self.protocol = server_protocol(self.base_send)
        self.session = Connection(
            client, headers, self.send_text, self.close, turn_state=state, send_many=self.send_many
        )
        self.session.trace_link = tracing.connection_span(headers, {"sluice.key.name": client.key_name})
        metrics.client_sockets.inc()  # paired with the dec in websocket_disconnect
        lifecycle.opened(self)

    async def send_text(self, text: str) -> None:
        if not self.closed:
            await self.send_or_close({"type": "websocket.send", "text": text})

    async def send_or_close(self, message: dict[str, Any]) -> None:
        """Send; a client already gone marks the socket closed (its websocket.disconnect follows).
        uvicorn raises ClientDisconnected (an OSError) once the client is gone, and RuntimeError for a send
        after the server itself closed the socket (a 1009 of proxy/server/ws_protocol.py)."""
        try:
            await self.base_send(message)
        except (OSError, RuntimeError):
            self.closed = True

    async def send_many(self, texts: list[str]) -> None:
        """Events that arrived together, in one write where the server allows it."""
        if self.closed:
            return
        if self.protocol is not None and write_together(self.protocol, texts):
            return
        for text in texts:
            await self.send_text(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            await self.send_or_close({"type": "websocket.close", "code": code, "reason": reason})

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.session is None:
            return
        # Taken out of the message: Channels keeps the message itself referenced until the next one comes,
        # and a large frame must not stay in memory that long (the server counts it until this returns).
        text = message.pop("text", None)
        if text is None:
            await self.send_text(
                WireError(
                    400, "unsupported_frame", "Binary frames are not supported; send JSON text frames."
                ).ws_frame()
            )
            await self.close(1003, "binary frames are not supported")
            return
        await self.session.receive(text)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self.release()
        raise StopConsumer()

    async def release(self) -> None:
        """Give back everything the socket holds; once, whichever exit path comes first."""
        if self.released:
            return
        self.released = self.closed = True
        lifecycle.closed(self)
        try:
            if self.session is not None:
                metrics.client_sockets.dec()
                await self.session.shutdown()
        finally:
            self.admission.release()
            for group in getattr(self, "groups", []):
                await self.channel_layer.group_discard(group, self.channel_name)

    def idle(self) -> bool:
        return self.session is None or not self.session.busy

    async def go_away(self) -> None:
        """The node is draining: the client reconnects, through the balancer, to another node."""
        await self.close(1001, "going away")

    async def sluice_revoke(self, event: dict[str, Any]) -> None:
        """The key was disabled or deleted in another process: end this connection."""
        revoked = WireError(401, "invalid_api_key", "This API key was revoked or its user deactivated.")
        await self.send_text(for_client(revoked, request_headers(self.scope)).ws_frame())
        await self.close(1008, "API key revoked")


class NotFoundConsumer(AsyncConsumer):
    async def websocket_connect(self, message: dict[str, Any]) -> None:
        error = WireError(404, "not_found", f"No WebSocket endpoint at {self.scope['path']}.")
        await deny(self.scope, self.send, 404, error, endpoint="unknown")

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        raise StopConsumer()
