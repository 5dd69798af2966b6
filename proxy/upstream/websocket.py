"""Upstream WebSocket: one socket per client connection, reused across its turns."""

import time
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Opcode
from websockets.protocol import State

from providers.registry import ProviderInfo
from proxy.common.transport import FallbackReason
from proxy.upstream.http import upstream_headers
from proxy.usage import metrics, signals, tracing
from settings_app import shared

BETA_HEADER = "responses_websockets=2026-02-06"
# Upgrade refusals that say "this upstream has no WebSocket mode", remembered for a while.
NO_WEBSOCKET_STATUSES = frozenset({400, 404, 405, 426, 501})


def with_beta_flag(client_value: str) -> str:
    """The client's ``OpenAI-Beta`` values (e.g. ``responses_multi_agent=v1``, which ``response.inject``
    needs) with the WebSocket flag the upstream socket requires: merged, never replaced."""
    values = [v.strip() for v in client_value.split(",") if v.strip()]
    if not any(v.split("=", 1)[0] == BETA_HEADER.split("=", 1)[0] for v in values):
        values.append(BETA_HEADER)
    return ", ".join(values)


def public_url(url: str) -> str:
    """The URL without credentials or query string, fit for the request log."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def unsupported_key(provider_id: int) -> str:
    return f"sluice:ws-unsupported:{provider_id}"


HANDSHAKE_HEADERS = ("x-codex-turn-state", "openai-model", "x-models-etag", "x-reasoning-included")


def read_ready(connection: ClientConnection) -> list[str]:
    """Text messages already received whole, taken without waiting: the frames that arrived with the one
    just read, relayed in one go (websockets hands them out one ``recv`` at a time otherwise)."""
    assembler = connection.recv_messages
    queue = assembler.frames.queue
    ready: list[str] = []
    while queue and not assembler.get_in_progress:
        frame = queue[0]
        if not frame.fin or frame.opcode is not Opcode.TEXT:
            break  # fragmented or binary: left to recv()
        queue.popleft()
        ready.append(frame.data.decode())
    if ready:
        assembler.maybe_resume()
    return ready


class HandshakeFailed(Exception):
    def __init__(self, reason: FallbackReason, status: int | None = None, detail: str = "") -> None:
        super().__init__(detail or reason.label)
        self.reason = reason
        self.status = status
        self.detail = detail


class UpstreamSocket:
    def __init__(self, provider: ProviderInfo, connection: ClientConnection, handshake_ms: float) -> None:
        self.provider = provider
        self.connection = connection
        self.handshake_ms = handshake_ms
        self.url = public_url(provider.websocket_url)
        self.counted = True
        metrics.upstream_sockets.inc()  # paired with the dec in close()
        self.opened_at = time.monotonic()
        response = connection.response
        # What the upstream said about itself on the handshake (Codex reads these from ours).
        self.handshake_headers = {
            name: response.headers[name]
            for name in HANDSHAKE_HEADERS
            if response and name in response.headers
        }

    lanes = False  # events come back as the client's lane needs them tagged by the gateway

    @property
    def is_open(self) -> bool:
        return self.connection.state is State.OPEN

    async def send(self, text: str) -> None:
        await self.connection.send(text)

    async def recv(self) -> str:
        data = await self.connection.recv(decode=True)
        return data if isinstance(data, str) else data.decode()

    async def recv_batch(self) -> list[str]:
        """The next message and every whole one that arrived with it."""
        return [await self.recv(), *read_ready(self.connection)]

    def ready(self) -> list[str]:
        """The whole messages that arrived with the one read last, taken without waiting: a relay that
        read the first event alone sends them with it, in one write to the client."""
        return read_ready(self.connection)

    @classmethod
    async def open(
        cls, provider: ProviderInfo, client_headers: Mapping[str, str], timeout: float
    ) -> "UpstreamSocket":
        with tracing.span("upstream websocket handshake", {"sluice.provider": provider.name}):
            return await cls._open(provider, client_headers, timeout)

    @classmethod
    async def _open(
        cls, provider: ProviderInfo, client_headers: Mapping[str, str], timeout: float
    ) -> "UpstreamSocket":
        headers = upstream_headers(provider, client_headers)
        headers.pop("accept", None)
        headers.pop("accept-encoding", None)
        headers["openai-beta"] = with_beta_flag(headers.get("openai-beta", ""))
        started = time.perf_counter()
        try:
            connection = await connect(
                provider.websocket_url,
                additional_headers=headers,
                open_timeout=timeout,
                max_size=None,
                compression=None,
                proxy=provider.proxy_url or None,
                ping_interval=20,
                ping_timeout=20,
                user_agent_header=headers.get("user-agent") or "sluice",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise HandshakeFailed(
                FallbackReason.UPGRADE_REFUSED, status, f"upgrade refused with HTTP {status}"
            ) from None
        except TimeoutError:
            raise HandshakeFailed(FallbackReason.HANDSHAKE_TIMEOUT, None, "handshake timed out") from None
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            raise HandshakeFailed(FallbackReason.CONNECT_FAILED, None, type(exc).__name__) from None
        return cls(provider, connection, (time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        if self.counted:
            self.counted = False
            metrics.upstream_sockets.dec()
        await self.connection.close()


async def known_unsupported(provider_id: int) -> bool:
    return bool(await shared.aget(unsupported_key(provider_id)))


async def remember_unsupported(provider_id: int, ttl: int) -> None:
    await shared.aset(unsupported_key(provider_id), True, ttl)
    signals.upstream_websocket_refused.send_robust(sender=None, provider_id=provider_id)
