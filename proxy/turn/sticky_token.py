"""``x-codex-turn-state``: the sticky-routing token Codex reads from a handshake and sends back on later
requests and reconnects. Sluice issues its own token, which maps (in the shared cache, so any process
can read it) to the provider that served it and to that upstream's own token. A token belongs to the key
it was issued to: another key presenting it gets a fresh one, and nothing of the first's."""

import secrets
from dataclasses import dataclass, field

from django.conf import settings

from settings_app import shared

HEADER = "x-codex-turn-state"
PREFIX = "sluice-ts-"


@dataclass
class TurnState:
    token: str
    provider_id: int | None = None
    upstream_token: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # the upstream's last handshake headers
    key_id: int | None = None  # the key it was issued to


def _key(token: str) -> str:
    return f"sluice:turn-state:{token}"


def ours(token: str | None) -> bool:
    return bool(token) and token.startswith(PREFIX) and len(token) < 100  # type: ignore[union-attr]


async def resume(presented: str | None, key_id: int | None) -> TurnState:
    """The state a client presented (one of ours that the cache still knows, issued to this key), else a
    fresh token."""
    if presented and ours(presented):
        found = await shared.aget(_key(presented))
        if isinstance(found, dict) and found.get("k") == key_id:
            headers = dict(found.get("h") or {})
            return TurnState(presented, found.get("p"), found.get("u") or "", headers, key_id)
    return TurnState(PREFIX + secrets.token_urlsafe(24), key_id=key_id)


async def remember(state: TurnState, provider_id: int, upstream_headers: dict[str, str]) -> None:
    """The provider that now serves this token, and what its upstream said on the handshake."""
    upstream_token = upstream_headers.get(HEADER, "")
    headers = {k: v for k, v in upstream_headers.items() if k != HEADER}
    if (state.provider_id, state.upstream_token, state.headers) == (provider_id, upstream_token, headers):
        return
    state.provider_id, state.upstream_token, state.headers = provider_id, upstream_token, headers
    value = {"p": provider_id, "u": upstream_token, "h": headers, "k": state.key_id}
    await shared.aset(_key(state.token), value, settings.SLUICE_SESSION_AFFINITY_TTL)


def forwarded(
    client_headers: dict[str, str], state: TurnState | None, provider_id: int | None
) -> dict[str, str]:
    """The client's headers as the upstream may see them: a token of ours becomes the upstream's own
    (when it belongs to this provider) or is dropped; anyone else's token goes through untouched."""
    presented = client_headers.get(HEADER)
    if presented is None or not ours(presented):
        return client_headers
    headers = {k: v for k, v in client_headers.items() if k != HEADER}
    if state is not None and state.provider_id == provider_id and state.upstream_token:
        headers[HEADER] = state.upstream_token
    return headers
