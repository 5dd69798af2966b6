"""Which providers may serve a request, in the order to try them."""

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from providers import health
from providers.registry import ProviderInfo, enabled_providers
from providers.text import storable
from settings_app import shared


@dataclass(frozen=True)
class Route:
    provider: ProviderInfo
    upstream_model: str
    breaker_state: dict | None


@dataclass(frozen=True)
class Affinity:
    """Where earlier requests went: the provider that produced a response, and a session's provider."""

    response_id: str | None = None
    session_key: str | None = None
    provider_id: int | None = None  # a client's sticky-routing token (x-codex-turn-state) names it


def response_key(response_id: str) -> str:
    return f"sluice:resp:{response_id}"


def session_key(api_key_id: int | None, session: str) -> str:
    return f"sluice:sess:{api_key_id}:{session}"


def session_of(body: Mapping[str, Any] | None, headers: Mapping[str, str]) -> str:
    """A request's session: the ``prompt_cache_key`` of its body, or the ``session-id`` header Codex sends."""
    session = (
        (body or {}).get("prompt_cache_key") or headers.get("session-id") or headers.get("session_id") or ""
    )
    return storable(session)


def _key_part(text: object) -> str:
    """A client's string as part of a cache key: storable, and hashed when long (keys stay small)."""
    text = storable(text)
    return text if len(text) <= 200 else "h:" + hashlib.sha256(text.encode()).hexdigest()


def affinity_for(key_id: int | None, response_id: object, session: str) -> Affinity:
    return Affinity(
        response_id=_key_part(response_id) or None,
        session_key=session_key(key_id, _key_part(session)) if session else None,
    )


def order(
    providers: tuple[ProviderInfo, ...],
    model: str | None,
    preferred: list[int],
    open_ids: set[int],
    rng: random.Random = random._inst,  # type: ignore[attr-defined]
) -> list[ProviderInfo]:
    """Pure ordering: preferred (affinity) first, then by priority with weighted random among equals;
    providers whose breaker is open go last, so they are tried only when nothing else is left."""
    eligible = [p for p in providers if model is None or p.serves(model)]
    # Weighted random order without replacement (Efraimidis-Spirakis keys).
    keyed = sorted(eligible, key=lambda p: (p.priority, -(rng.random() ** (1.0 / p.weight))))
    rank = {pid: i for i, pid in enumerate(preferred)}
    keyed.sort(key=lambda p: (p.id in open_ids, rank.get(p.id, len(rank))))
    return keyed


@dataclass(frozen=True)
class Plan:
    routes: list[Route]
    session_provider: int | None  # where the session is pinned now, so an unchanged pin costs no write


async def plan(model: str | None, affinity: Affinity) -> Plan:
    """Routes for ``model`` (None: any provider, for requests that name a response rather than a model)."""
    providers = await enabled_providers.aget()
    keys = [health.breaker_key(p.id) for p in providers]
    if affinity.response_id:
        keys.append(response_key(affinity.response_id))
    if affinity.session_key:
        keys.append(affinity.session_key)
    found = await shared.aget_many(keys) if keys else {}
    preferred = [
        pid
        for pid in (
            affinity.provider_id,
            found.get(response_key(affinity.response_id)) if affinity.response_id else None,
            found.get(affinity.session_key) if affinity.session_key else None,
        )
        if pid is not None
    ]
    states = {p.id: found.get(health.breaker_key(p.id)) for p in providers}
    open_ids = {pid for pid, state in states.items() if health.is_open(state)}
    return Plan(
        routes=[
            Route(
                provider=p,
                upstream_model=p.upstream_model(model) if model else "",
                breaker_state=states[p.id],
            )
            for p in order(providers, model, preferred, open_ids)
        ],
        session_provider=found.get(affinity.session_key) if affinity.session_key else None,
    )


async def remember(provider_id: int, response_id: str | None, affinity: Affinity, pinned: int | None) -> None:
    """Pin a response id (for previous_response_id and /responses/{id}) and the session to a provider."""
    if response_id:
        await shared.aset(response_key(response_id), provider_id, settings.SLUICE_RESPONSE_AFFINITY_TTL)
    if affinity.session_key and pinned != provider_id:
        await shared.aset(affinity.session_key, provider_id, settings.SLUICE_SESSION_AFFINITY_TTL)
