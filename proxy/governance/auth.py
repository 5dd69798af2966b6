"""Client authentication against Sluice's own API keys, from an in-memory snapshot of the key table."""

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from django.utils import timezone

from proxy.governance.limits import Policy, policy_for, seed_spend
from proxy.governance.revocation import revoke_here
from proxy.models import ApiKey, hash_key
from settings_app.runtime import Snapshot


@dataclass(frozen=True)
class Client:
    key_id: int | None
    key_name: str
    owner_id: int
    expires_at: dt.datetime | None
    team_id: int | None = None
    policy: Policy | None = None  # None: nothing limits this key (admission costs nothing)
    owner_active: bool = True  # the owner may sign in (a deactivated person's keys serve nothing)

    def usable(self) -> bool:
        """Whether the key may serve now: its owner active and, by the clock, not expired."""
        return self.owner_active and (self.expires_at is None or self.expires_at > timezone.now())


class KeyTable(dict[str, Client]):
    """The enabled keys by hash, and by id (for open sockets, which read their key's policy per turn)."""

    def __init__(self, clients: dict[str, Client]) -> None:
        super().__init__(clients)
        self.by_id = {c.key_id: c for c in clients.values()}


def _load() -> KeyTable:
    rows = ApiKey.objects.filter(enabled=True).select_related("team", "owner")
    clients = {
        k.hashed_key: Client(
            k.pk,
            k.name,
            k.owner_id,
            k.expires_at,
            k.team_id,
            policy_for(k, k.team),
            k.owner.is_active,
        )
        for k in rows
    }
    seed_spend([q for c in clients.values() if c.policy is not None for q in c.policy.quotas])
    return KeyTable(clients)


def _serving(table: dict[str, Client]) -> set[int | None]:
    return {
        c.key_id
        for c in table.values()
        if c.usable() and not (c.policy is not None and c.policy.team_disabled)
    }


def _close_sockets_of_vanished_keys(old: dict[str, Client], new: dict[str, Client]) -> None:
    """A key disabled, deleted or expired by another process (``manage.py``, another server), or whose
    team was disabled or owner deactivated there, stops serving in the snapshot here: close its sockets
    in this process, whatever channel layer there is (the in-memory one does not cross processes)."""
    for key_id in _serving(old) - _serving(new):
        if key_id is not None:
            revoke_here(key_id)


keys: Snapshot[KeyTable] = Snapshot("api-keys", _load, on_change=_close_sockets_of_vanished_keys)

PROTOCOL_PREFIX = "openai-insecure-api-key."


def presented_key(headers: Mapping[str, str], subprotocols: list[str] | tuple[str, ...] = ()) -> str | None:
    """The key a client presents: ``Authorization: Bearer``, ``x-api-key``, or (WebSocket only) the
    ``openai-insecure-api-key.<key>`` subprotocol that browsers use."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    for proto in subprotocols:
        if proto.startswith(PROTOCOL_PREFIX):
            return proto[len(PROTOCOL_PREFIX) :]
    return None


async def authenticate(raw: str | None) -> Client | None:
    if not raw:
        return None
    client = (await keys.aget()).get(hash_key(raw))
    if client is None or not client.usable():
        return None
    return client


async def current(client: Client) -> Client | None:
    """The key of an open connection as it is now (limits, budgets, models, team), or None when it may no
    longer serve (disabled, deleted, expired, its owner deactivated)."""
    fresh = (await keys.aget()).by_id.get(client.key_id)
    if fresh is None or not fresh.usable():
        return None
    return fresh
