"""Upstream HTTP: shared connection pools, and requests whose events are relayed as they arrive."""

import asyncio
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

from providers.registry import ProviderInfo
from proxy.wire import Event, SSEDecoder

# Headers of the client's that the upstream may see; everything else (its key above all) stays here.
FORWARDED_HEADERS = (
    "accept",
    "user-agent",
    "originator",
    "session-id",
    "session_id",
    "thread-id",
    "x-client-request-id",
    "x-codex-turn-metadata",
    "x-codex-beta-features",
    "x-codex-window-id",
    "openai-beta",
)
# Upstream response headers the client may see; hop-by-hop headers, cookies and the rest stay here.
RETURNED_HEADERS = ("x-request-id", "openai-processing-ms", "openai-version", "retry-after")

_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, httpx.AsyncClient]]" = (
    weakref.WeakKeyDictionary()
)


def pool(proxy_url: str = "") -> httpx.AsyncClient:
    """The connection pool of this event loop for a given outbound proxy (one per process in production)."""
    loop = asyncio.get_running_loop()
    clients = _pools.setdefault(loop, {})
    client = clients.get(proxy_url)
    if client is None:
        client = httpx.AsyncClient(
            proxy=proxy_url or None,
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200, keepalive_expiry=60),
            follow_redirects=False,
            trust_env=False,
        )
        clients[proxy_url] = client
    return client


def upstream_headers(provider: ProviderInfo, client_headers: Mapping[str, str]) -> dict[str, str]:
    headers = {name: client_headers[name] for name in FORWARDED_HEADERS if name in client_headers}
    headers.update(provider.extra_headers)
    headers["authorization"] = f"Bearer {provider.api_key}"
    # Compressed SSE would hold events back in the compressor; the gateway relays bytes as they come.
    headers["accept-encoding"] = "identity"
    return headers


def returned_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in RETURNED_HEADERS if name in response.headers}


@dataclass
class Opened:
    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code

    async def read_error(self, limit: int = 64 * 1024) -> bytes:
        """An error body, bounded: enough to relay the upstream's message, never a whole stream."""
        body = b""
        try:
            async for chunk in self.response.aiter_raw():
                body += chunk
                if len(body) >= limit:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await self.response.aclose()
        return body[:limit]

    async def events(self) -> AsyncIterator[Event]:
        decoder = SSEDecoder()
        async for chunk in self.response.aiter_raw():
            for event in decoder.feed(chunk):
                yield event

    async def close(self) -> None:
        await self.response.aclose()

    async def finish(self, events: AsyncIterator[Event] | None, grace: float = 1.0) -> None:
        """Read what follows the terminal event (the end of the chunked body, a ``[DONE]``) before closing:
        a response closed before its body ends costs its keep-alive connection."""
        try:
            async with asyncio.timeout(grace):
                if events is not None:
                    async for _ in events:
                        pass
                else:
                    async for _ in self.response.aiter_raw():
                        pass
        except (TimeoutError, httpx.HTTPError, OSError):
            pass
        finally:
            await self.response.aclose()


async def open_request(
    provider: ProviderInfo,
    method: str,
    path: str,
    *,
    body: bytes | None,
    client_headers: Mapping[str, str],
    query: str = "",
) -> Opened:
    """Send a request upstream and wait for its status line and headers (within the first-byte timeout)."""
    headers = upstream_headers(provider, client_headers)
    if body is not None:
        headers["content-type"] = "application/json"
    timeout = httpx.Timeout(
        connect=provider.connect_timeout,
        read=provider.idle_timeout,
        write=provider.idle_timeout,
        pool=provider.connect_timeout,
    )
    url = provider.url(path) + (f"?{query}" if query else "")
    client = pool(provider.proxy_url)
    request = client.build_request(method, url, content=body, headers=headers, timeout=timeout)
    async with asyncio.timeout(provider.connect_timeout + provider.first_byte_timeout):
        response = await client.send(request, stream=True)
    return Opened(response)
