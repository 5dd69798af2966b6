"""An open WebSocket serves under its key's policy as it is now, not as it was at connect time.

Each ``response.create`` reads the key's current snapshot (limits, budgets, model list, team, expiry,
owner); a key that may no longer serve ends the connection. A key that expires by the clock ends its
connections at that moment, turn or no turn. Changes made elsewhere (another process, another node)
reach open sockets through the key snapshot's reload (``proxy.governance.auth``) and the revocation broadcast
(``proxy.apps``), within ``SLUICE_CONFIG_POLL_SECONDS``.
"""

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from django.utils import timezone

from proxy.common.wire import WireError
from proxy.governance.auth import Client, current

log = logging.getLogger("sluice.ws")

# The longest a timer waits before looking again (a far expiry is checked again then).
LONGEST_WAIT = 3600.0


def revoked_error() -> WireError:
    return WireError(401, "invalid_api_key", "This API key was revoked or has expired.")


class KeyWatch:
    """Keeps one connection on its key: the fresh ``Client`` for each turn, and the clock's expiry."""

    def __init__(self, client: Client, end: Callable[[WireError], Awaitable[None]]) -> None:
        self.client = client
        self._end = end  # sends the error frame and closes the connection
        self._timer: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task[None] | None = None  # a reference keeps the check's task alive
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        expires_at: dt.datetime | None = self.client.expires_at
        if expires_at is None or self.client.key_id is None:
            return
        delay = (expires_at - timezone.now()).total_seconds()
        self._timer = asyncio.get_running_loop().call_later(min(max(delay, 0.0), LONGEST_WAIT), self._due)

    def _due(self) -> None:
        self._timer = None
        self._ending = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        if await self.refresh() is not None:
            self._arm()  # the expiry moved later (or this was a far one's intermediate wake-up)

    async def refresh(self) -> Client | None:
        """The key as it is now; None (after ending the connection) when it may no longer serve."""
        if self.client.key_id is None:  # the provider test: no key to follow
            return self.client
        fresh = await current(self.client)
        if fresh is None:
            log.info("closing a client socket of key %s: no longer valid", self.client.key_name)
            self.cancel()
            await self._end(revoked_error())
            return None
        moved = fresh.expires_at != self.client.expires_at
        self.client = fresh
        if moved:
            self._arm()
        return fresh

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
