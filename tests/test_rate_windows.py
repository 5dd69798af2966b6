"""Sliding rate windows: no span of SLUICE_RATE_WINDOW_SECONDS ever holds more than a key's limit, on the
embedded store and on Redis (a redis-server of this test's own on a free port), and the reset times they
give are exact."""

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.governance import limits
from proxy.governance.limit_stores import LocalStore, RedisStore
from proxy.governance.quotas import REQUESTS, TOKENS, TURN, Clock, Quota, free_at
from tests.serveproc import RedisServer

WINDOW = 60.0
START = 1_000_000 * WINDOW  # the start of a fixed 60-second window


@pytest.mark.parametrize(
    ("entries", "limit", "expected"),
    [
        ([], 5, 0.0),  # nothing held: nothing to wait for
        ([(10.0, 1)], None, 70.0),  # no limit: the window is empty again when its newest leaves
        ([(10.0, 1), (20.0, 1)], 5, 80.0),  # below the limit: the same
        ([(10.0, 1), (20.0, 1), (30.0, 1)], 3, 70.0),  # at it: when the oldest leaves, one more fits
        ([(10.0, 1), (20.0, 1), (30.0, 1)], 2, 80.0),  # over it (the limit lowered): two must leave
        ([(10.0, 40), (20.0, 70)], 100, 70.0),  # tokens: 110 held, 40 leaving frees the limit
        ([(10.0, 40), (20.0, 70)], 50, 80.0),  # 70 alone is still over 50
        ([(10.0, 1)], 0, 70.0),  # a limit of 0 never frees: the newest entry's expiry
    ],
)
def test_free_at(entries, limit, expected):
    assert free_at(entries, sum(amount for _, amount in entries), limit, WINDOW) == expected


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["local", "redis"])
def store(request, settings) -> Any:
    settings.SLUICE_RATE_WINDOW_SECONDS = WINDOW
    if request.param == "local":
        return LocalStore()
    from django.core.cache.backends.redis import RedisCache

    cache = RedisCache(request.getfixturevalue("redis_url"), {"KEY_PREFIX": request.node.name})
    return RedisStore(cache)


def release(store: Any, quota: Quota, lease: str, tokens: int, now: float) -> None:
    store.release((quota,), TURN, lease, tokens, 0, Clock.at(now))
    if not store.local:
        for pending in store.releasing((quota,)):
            pending.result(10)


def test_a_burst_at_the_end_of_a_window_and_one_at_the_start_of_the_next_is_one_limit(store):
    quota = Quota("k1", "key", "ci", rpm=5)
    end = START - 0.5
    for n in range(5):
        assert store.take((quota,), TURN, f"a{n}", Clock.at(end + n * 0.01))[0] == 0
        release(store, quota, f"a{n}", 0, end + n * 0.01)
    after = START + 0.5  # a new fixed window, but the same sliding one
    what, index, usages = store.take((quota,), TURN, "b0", Clock.at(after))
    assert (what, index, usages[0].requests) == (REQUESTS, 0, 5)
    error = limits.refusal(quota, what, usages[0], Clock.at(after))
    assert error.headers["Retry-After"] == "59"  # 59.0 s until the first of the burst is a window old
    assert usages[0].requests_free == pytest.approx(end + WINDOW)
    assert store.take((quota,), TURN, "b1", Clock.at(end + WINDOW - 0.001))[0] == REQUESTS
    assert store.take((quota,), TURN, "b2", Clock.at(end + WINDOW + 0.001))[0] == 0  # one left: one fits
    assert store.take((quota,), TURN, "b3", Clock.at(end + WINDOW + 0.002))[0] == REQUESTS


def test_tokens_spent_at_the_end_of_a_window_count_at_the_start_of_the_next(store):
    quota = Quota("k2", "key", "ci", tpm=100)
    end = START - 1.0
    assert store.take((quota,), TURN, "a", Clock.at(end))[0] == 0
    release(store, quota, "a", 60, end)
    assert store.take((quota,), TURN, "b", Clock.at(end + 0.5))[0] == 0
    release(store, quota, "b", 50, end + 0.5)
    what, _, usages = store.take((quota,), TURN, "c", Clock.at(START + 1.0))
    assert (what, usages[0].tokens) == (TOKENS, 110)
    assert usages[0].tokens_free == pytest.approx(end + WINDOW)  # 60 leaving leaves 50: under 100
    headers = limits.rate_headers((quota,), usages, Clock.at(START + 1.0), counted=False)
    assert (headers["x-ratelimit-remaining-tokens"], headers["x-ratelimit-reset-tokens"]) == ("0", "58s")
    what, _, usages = store.take((quota,), TURN, "d", Clock.at(end + WINDOW + 0.01))
    assert (what, usages[0].tokens) == (0, 50)


def test_the_headers_say_when_the_window_is_empty_again(store):
    quota = Quota("k3", "key", "ci", rpm=3)
    assert store.take((quota,), TURN, "a", Clock.at(START))[0] == 0
    release(store, quota, "a", 0, START)
    _, _, usages = store.take((quota,), TURN, "b", Clock.at(START + 20))
    headers = limits.rate_headers((quota,), usages, Clock.at(START + 20), counted=True)
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"  # the one just counted leaves in a window
    assert usages[0].requests_free == pytest.approx(START + WINDOW)
