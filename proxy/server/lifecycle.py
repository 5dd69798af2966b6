"""This process's lifecycle, as the probes and the ingresses see it: serving, then draining before exit.

``/readyz`` answers 503 while draining so a balancer stops sending new work; the WebSocket ingress closes
idle client sockets with 1001 (going away) and lets turns in flight finish. Open client sockets register
here so the drain can find them (``proxy.server.drain`` runs it on SIGTERM).
"""

from typing import Protocol

_draining = False


class Drainable(Protocol):
    """An open client connection, as the drain sees it."""

    def idle(self) -> bool:
        """No turn running or waiting on it."""

    async def go_away(self) -> None:
        """Close it with 1001 so the client reconnects elsewhere."""


_open: set[Drainable] = set()


def draining() -> bool:
    return _draining


def begin_drain() -> None:
    global _draining
    _draining = True


def opened(connection: Drainable) -> None:
    _open.add(connection)


def closed(connection: Drainable) -> None:
    _open.discard(connection)


def open_connections() -> list[Drainable]:
    return list(_open)
