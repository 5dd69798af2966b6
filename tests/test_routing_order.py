"""Provider order: affinity first, then priority, weighted random among equals, open breakers last."""

import random
from collections import Counter

from providers.registry import ProviderInfo
from providers.routing import order


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
