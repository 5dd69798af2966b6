"""Client authentication against Sluice's own API keys, from an in-memory snapshot of the key table."""

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from django.utils import timezone

from proxy.limits import Policy, policy_for, seed_spend
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


def _load() -> dict[str, Client]:
    rows = ApiKey.objects.filter(enabled=True, owner__is_active=True).select_related("team")
    clients = {
        k.hashed_key: Client(k.pk, k.name, k.owner_id, k.expires_at, k.team_id, policy_for(k, k.team))
        for k in rows
    }
    seed_spend([q for c in clients.values() if c.policy is not None for q in c.policy.quotas])
    return clients


def _close_sockets_of_vanished_keys(old: dict[str, Client], new: dict[str, Client]) -> None:
    """A key disabled or deleted by another process (``manage.py``, another server) disappears from the
    snapshot here: close its sockets in this process, whatever channel layer there is (the in-memory one
    does not cross processes)."""
    from proxy.apps import revoke_here

    gone = {c.key_id for c in old.values()} - {c.key_id for c in new.values()}
    for key_id in gone:
        if key_id is not None:
            revoke_here(key_id)


keys: Snapshot[dict[str, Client]] = Snapshot("api-keys", _load, on_change=_close_sockets_of_vanished_keys)

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
    if client is None or (client.expires_at is not None and client.expires_at <= timezone.now()):
        return None
    return client
