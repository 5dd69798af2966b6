"""Provider order: affinity first, then priority, weighted random among equals, open breakers last."""

import asyncio
import hashlib
import random
import time
from collections import Counter

import pytest

from providers.registry import ProviderInfo
from providers.routing import Affinity, affinity_for, order, remember, response_key, session_of


def provider(
    pid: int, priority: int = 1, weight: int = 1, models: tuple[str, ...] = (), redirects=None
) -> ProviderInfo:
    return ProviderInfo(
        id=pid,
        name=f"p{pid}",
        base_url="http://127.0.0.1:1/v1",
        api_key="k",
        priority=priority,
        weight=weight,
        allowed_models=frozenset(models),
        model_redirects=redirects or {},
        extra_headers={},
        connect_timeout=1,
        first_byte_timeout=1,
        idle_timeout=1,
        proxy_url="",
        websocket_mode="auto",
    )


def test_lower_priority_first_and_models_filter():
    providers = (provider(1, priority=5), provider(2, priority=1), provider(3, priority=0, models=("other",)))
    assert [p.id for p in order(providers, "gpt-5.5", [], set())] == [2, 1]


def test_redirect_source_counts_as_served():
    providers = (provider(1, models=("a",), redirects={"fast": "b"}),)
    assert [p.id for p in order(providers, "fast", [], set())] == [1]


def test_weighted_random_among_equals():
    rng = random.Random(7)
    providers = (provider(1, weight=3), provider(2, weight=1))
    firsts = Counter(order(providers, "m", [], set(), rng)[0].id for _ in range(4000))
    assert 0.70 < firsts[1] / 4000 < 0.80


def test_affinity_first_and_open_breakers_last():
    providers = (provider(1), provider(2, priority=2), provider(3, priority=3))
    assert [p.id for p in order(providers, "m", [3], set())] == [3, 1, 2]
    assert [p.id for p in order(providers, "m", [3], {3})] == [1, 2, 3]
    assert [p.id for p in order(providers, "m", [], {1})] == [2, 3, 1]


@pytest.mark.parametrize(
    ("body", "headers", "session"),
    [
        ({"prompt_cache_key": "pck"}, {"session-id": "hdr"}, "pck"),
        ({}, {"session-id": "codex", "session_id": "other"}, "codex"),
        (None, {"session_id": "underscored"}, "underscored"),
        ({"prompt_cache_key": ""}, {}, ""),
    ],
    ids=["prompt-cache-key-first", "session-id-header", "session_id-header", "none"],
)
def test_a_requests_session_comes_from_its_cache_key_or_codexs_header(body, headers, session):
    assert session_of(body, headers) == session


def test_long_client_strings_are_hashed_in_cache_keys():
    exact = "r" * 200
    longer = "r" * 201
    assert affinity_for(7, exact, "").response_id == exact
    hashed = affinity_for(7, longer, longer)
    assert hashed.response_id == "h:" + hashlib.sha256(longer.encode()).hexdigest()
    assert hashed.session_key == f"sluice:sess:7:{hashed.response_id}"


@pytest.mark.django_db
def test_remember_pins_with_their_lifetimes_and_only_what_there_is(settings):
    """A response pin and a session pin, each for its lifetime; no session pin without a session, and no
    write for a session already pinned to the provider."""
    from django.core.cache import caches

    cache = caches["default"]
    settings.SLUICE_RESPONSE_AFFINITY_TTL = 1
    settings.SLUICE_SESSION_AFFINITY_TTL = 1
    session = affinity_for(7, "resp_1", "work").session_key
    asyncio.run(remember(3, "resp_1", Affinity(session_key=session), pinned=None))
    assert (cache.get(response_key("resp_1")), cache.get(session)) == (3, 3)
    time.sleep(1.2)
    assert (cache.get(response_key("resp_1")), cache.get(session)) == (None, None), "pins outlived their TTL"
    asyncio.run(remember(3, None, Affinity(), pinned=None))
    assert cache.get("None") is None, "a session pin was written without a session"
    cache.set(session, 5)  # pinned elsewhere meanwhile: a pin the caller saw unchanged is not written again
    asyncio.run(remember(3, None, Affinity(session_key=session), pinned=3))
    assert cache.get(session) == 5
