"""The limit primitive on its own: the decision table, policies, clocks and the process-local store."""

import calendar
import time
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.governance import limits
from proxy.governance.limit_stores import LocalStore, RedisStore, local_store
from proxy.governance.limits import MICRO, Policy
from proxy.governance.quotas import (
    DAILY,
    MONTHLY,
    REQUEST,
    REQUESTS,
    SLOT_TTL,
    SLOTS,
    SOCKET,
    TOKENS,
    TURN,
    Clock,
    Quota,
    Usage,
    decide,
)

FULL = Quota("k1", "key", "ci", rpm=5, tpm=100, concurrency=2, sockets=1, daily=1000, monthly=5000)


@pytest.mark.parametrize(
    ("quota", "usage", "counts", "expected"),
    [
        (FULL, Usage(), TURN, 0),
        (FULL, Usage(requests=4, tokens=99, slots=1, day=999, month=4999), TURN, 0),
        (FULL, Usage(requests=5), TURN, REQUESTS),
        (FULL, Usage(tokens=100), TURN, TOKENS),
        (FULL, Usage(slots=2), TURN, SLOTS),
        (FULL, Usage(slots=2), REQUEST, 0),  # counting tokens holds no slot
        (FULL, Usage(requests=5), REQUEST, REQUESTS),
        (FULL, Usage(day=1000), TURN, DAILY),
        (FULL, Usage(month=5000), TURN, MONTHLY),
        (FULL, Usage(requests=5, day=1000), TURN, DAILY),  # a spent budget is said first
        (FULL, Usage(slots=1), SOCKET, SLOTS),
        (FULL, Usage(requests=5, day=1000), SOCKET, 0),  # a socket is only counted against sockets
        (Quota("t1", "team", "x"), Usage(requests=10**6, slots=10**6, day=10**9), TURN, 0),
        (Quota("t1", "team", "x", rpm=0), Usage(), TURN, REQUESTS),
    ],
)
def test_decide(quota, usage, counts, expected):
    assert decide(quota, usage, counts) == expected


def row(pk: int, name: str = "x", **fields):
    base = dict.fromkeys(("rpm", "tpm", "concurrency", "sockets", "daily_budget", "monthly_budget"))
    return SimpleNamespace(pk=pk, name=name, **{**base, "allowed_models": [], "enabled": True, **fields})


def test_policy_keeps_both_quotas_and_intersects_allow_lists():
    from decimal import Decimal

    key = row(3, "k", rpm=10, allowed_models=["gpt-5.5", "gpt-5-mini"])
    team = row(7, "t", rpm=4, daily_budget=Decimal("0.05"), allowed_models=["gpt-5-mini", "o3"])
    policy = limits.policy_for(key, team)
    assert [(q.scope, q.rpm, q.daily) for q in policy.quotas] == [("k3", 10, None), ("t7", 4, 50_000)]
    assert policy.models == {"gpt-5-mini"} and policy.allows("gpt-5-mini") and not policy.allows("gpt-5.5")
    assert policy.budgets and not policy.team_disabled


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("rpm", 5, {"rpm": 5}),
        ("tpm", 0, {"tpm": 0}),  # a limit of 0 is a limit
        ("concurrency", 2, {"concurrency": 2}),
        ("sockets", 1, {"sockets": 1}),
        ("daily_budget", Decimal("0.05"), {"daily": 50_000}),
        ("monthly_budget", Decimal("7"), {"monthly": 7_000_000}),
    ],
)
def test_any_one_limit_of_a_row_makes_its_quota(field, value, expected):
    assert limits.quota_of("t4", "team", row(4, "ops", **{field: value})) == Quota(
        "t4", "team", "ops", **expected
    )


@pytest.mark.parametrize(
    ("key", "team", "expected"),
    [
        (row(1), None, None),  # nothing limited: no policy, admission costs nothing
        (row(1), row(2), None),
        (row(1, "a", tpm=0), None, Policy((Quota("k1", "key", "a", tpm=0),))),
        (row(1, "a", rpm=5), row(2, "t"), Policy((Quota("k1", "key", "a", rpm=5),), team_name="t")),
        (
            row(1, "a", daily_budget=Decimal("1")),
            None,
            Policy((Quota("k1", "key", "a", daily=MICRO),), budgets=True),
        ),
        (
            row(1, "a"),
            row(2, "t", monthly_budget=Decimal("7")),
            Policy((Quota("t2", "team", "t", monthly=7 * MICRO),), team_name="t", budgets=True),
        ),
        (row(1, allowed_models=["m", "n"]), None, Policy((), frozenset({"m", "n"}))),
        (
            row(1),
            row(2, "t", allowed_models=["m"]),
            Policy((), frozenset({"m"}), team_name="t", team_models=frozenset({"m"})),
        ),
        (row(1), row(2, "ops", enabled=False), Policy((), None, team_disabled=True, team_name="ops")),
    ],
)
def test_a_key_policy_is_its_limits_and_its_teams(key, team, expected):
    assert limits.policy_for(key, team) == expected


@pytest.mark.parametrize(
    ("when", "day", "month", "day_ends", "month_ends"),
    [
        ((2026, 11, 28, 23, 59, 59), 20261128, 202611, (2026, 11, 29), (2026, 12, 1)),
        ((2026, 12, 31, 12, 0, 0), 20261231, 202612, (2027, 1, 1), (2027, 1, 1)),
        ((2028, 2, 28, 0, 0, 0), 20280228, 202802, (2028, 2, 29), (2028, 3, 1)),
    ],
)
def test_clock_knows_utc_days_and_months(settings, when, day, month, day_ends, month_ends):
    settings.SLUICE_RATE_WINDOW_SECONDS = 60
    now = calendar.timegm(when) + 0.25
    clock = Clock.at(now)
    assert (clock.day, clock.month) == (day, month)
    assert clock.day_ends == calendar.timegm((*day_ends, 0, 0, 0))
    assert clock.month_ends == calendar.timegm((*month_ends, 0, 0, 0))
    assert clock.window_ends - now == pytest.approx(60 - now % 60)


def test_each_instant_gets_its_own_utc_day_whatever_was_asked_before(settings):
    """The day of an instant is computed once a day and kept: walking forward then back across a year's
    end, each instant must get its own day, never a neighbour's kept under the wrong key."""
    settings.SLUICE_RATE_WINDOW_SECONDS = 60
    start = calendar.timegm((2026, 12, 30, 0, 0, 0))
    instants = [start + hour * 3600 + 0.5 for hour in range(0, 72, 5)]
    for now in instants + instants[::-1]:
        t = time.gmtime(now)
        clock = Clock.at(now)
        assert (clock.day, clock.month) == (int(time.strftime("%Y%m%d", t)), int(time.strftime("%Y%m", t)))
        assert clock.day_ends == calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "0.5s"), (0, "0.001s"), (1.5, "2s"), (12.2, "13s"), (60, "1m0s"), (361, "6m1s")],
)
def test_reset_times_read_like_openai(seconds, text):
    assert limits.duration(seconds) == text


def test_local_store_counts_and_releases(settings):
    settings.SLUICE_RATE_WINDOW_SECONDS = 60
    store = LocalStore()
    quota = Quota("k9", "key", "ci", rpm=3, concurrency=2)
    now = 60 * 1_000_000 + 1.0
    clock = Clock.at(now)
    assert store.take((quota,), TURN, "a", clock)[0] == 0
    assert store.take((quota,), TURN, "b", clock)[0] == 0
    what, index, usages = store.take((quota,), TURN, "c", clock)
    assert (what, index, usages[0].slots) == (SLOTS, 0, 2)
    store.release((quota,), TURN, "a", 40, 7, clock)
    store.release((quota,), TURN, "a", 0, 0, clock)  # a second release of the same lease changes nothing
    assert store.take((quota,), TURN, "c", clock)[0] == 0
    assert store.take((quota,), TURN, "d", clock)[0] == REQUESTS  # 3 requests this window
    later = Clock.at(now + 60)  # the next window: requests and tokens start again, slots stay held
    what, _, usages = store.take((quota,), TURN, "d", later)
    assert what == SLOTS and (usages[0].requests, usages[0].tokens, usages[0].day) == (0, 0, 7)


def test_spend_starts_again_each_utc_day_and_month(settings):
    settings.SLUICE_RATE_WINDOW_SECONDS = 60
    store = LocalStore()
    quota = Quota("k9", "key", "ci", daily=100, monthly=1000)
    for when, day, month in [
        ((2026, 11, 29, 23, 0, 0), 0, 0),
        ((2026, 11, 30, 9, 0, 0), 0, 30),  # a new day, the same month
        ((2026, 12, 1, 0, 0, 1), 0, 0),  # a new month
    ]:
        clock = Clock.at(calendar.timegm(when))
        usage = store.usage("k9", clock)
        assert (usage.day, usage.month) == (day, month)
        assert store.take((quota,), TURN, "t", clock)[0] == 0
        store.release((quota,), TURN, "t", 5, 30, clock)
        spend = store.usage("k9", clock)
        assert (spend.day, spend.month, spend.tokens) == (day + 30, month + 30, 5)


def test_a_socket_holds_a_socket_and_counts_no_request(settings):
    settings.SLUICE_RATE_WINDOW_SECONDS = 60
    store = LocalStore()
    quota = Quota("k9", "key", "ci", rpm=1, concurrency=1, sockets=1)
    clock = Clock.at(1_000_000.0)
    assert store.take((quota,), SOCKET, "s1", clock)[0] == 0
    assert (store.usage("k9", clock).requests, store.sockets("k9"), store.usage("k9", clock).slots) == (
        0,
        1,
        0,
    )
    assert store.take((quota,), SOCKET, "s2", clock)[0] == SLOTS
    assert store.take((quota,), TURN, "t1", clock)[0] == 0  # the socket took none of the turn's slots
    store.release((quota,), SOCKET, "t1", 0, 0, clock)  # a socket's release gives back only sockets
    assert (store.sockets("k9"), store.usage("k9", clock).slots) == (1, 1)
    store.release((quota,), SOCKET, "s1", 0, 0, clock)
    assert store.take((quota,), SOCKET, "s2", clock)[0] == 0


def test_a_lease_nobody_released_expires(settings):
    settings.SLUICE_RATE_WINDOW_SECONDS = 60
    store = LocalStore()
    quota = Quota("k9", "key", "ci", concurrency=1)
    now = 1_000_000.0
    assert store.take((quota,), TURN, "lost", Clock.at(now))[0] == 0
    assert store.take((quota,), TURN, "next", Clock.at(now + 1))[0] == SLOTS
    assert store.take((quota,), TURN, "next", Clock.at(now + SLOT_TTL + 1))[0] == 0


def test_the_tighter_of_key_and_team_refuses(settings):
    settings.SLUICE_RATE_WINDOW_SECONDS = 60
    store = LocalStore()
    key, team = Quota("k1", "key", "a", rpm=10), Quota("t1", "team", "T", rpm=2)
    other = Quota("k2", "key", "b", rpm=10)
    clock = Clock.at(1_000_000.0)
    assert store.take((key, team), TURN, "1", clock)[0] == 0
    assert store.take((other, team), TURN, "2", clock)[0] == 0
    what, index, _ = store.take((key, team), TURN, "3", clock)
    assert (what, index) == (REQUESTS, 1)  # the team's counter, shared by both keys
    assert store.usage("k1", clock).requests == 1  # a refused request is not counted


def price(model: str, per_million: int) -> Any:
    from decimal import Decimal

    from proxy.models import ModelPrice

    return ModelPrice(
        model=model,
        input_per_million=Decimal(per_million),
        cached_input_per_million=Decimal(per_million) / 2,
        output_per_million=Decimal(per_million) * 4,
    )


def test_spend_is_priced_per_token_and_rounded_up():
    from proxy.common.outcome import Outcome

    outcome = Outcome(input_tokens=1000, cached_input_tokens=400, output_tokens=100)
    # 600 x 2 + 400 x 1 + 100 x 8 = 2400 USD per million tokens = 2400 micro-USD
    assert limits.spend_of({"m": price("m", 2)}, "m-2026-01-01", outcome) == 2400
    assert limits.spend_of({"m": price("m", 2)}, "other", outcome) == 0
    assert limits.spend_of({"m": price("m", 2)}, "m", Outcome(input_tokens=1)) == 2  # never rounded to 0


@pytest.mark.parametrize("reload", ["both-alive", "old-one-freed"])
def test_spend_uses_the_price_table_it_is_given(reload):
    """Rates are cached per price table: a reloaded table pricing a model differently is used at once,
    even when the old table is gone and the new one took its place in memory."""
    from proxy.common.outcome import Outcome

    outcome = Outcome(input_tokens=1000, output_tokens=0)
    old, dearer = {"m": price("m", 2)}, price("m", 3)
    assert limits.spend_of(old, "m", outcome) == 2000
    if reload == "old-one-freed":
        # CPython hands a freed dict's memory to the next dict made: a cache keyed by id(prices) that let
        # the old table go would find its rates under the new table's id.
        del old
    new = {"m": dearer}
    assert limits.spend_of(new, "m", outcome) == 3000
    if reload == "both-alive":  # an admission taken before the reload still prices with its own table
        assert limits.spend_of(old, "m", outcome) == 2000


def test_refusals_say_which_budget_and_when_it_resets(settings):
    settings.SLUICE_RATE_WINDOW_SECONDS = 60
    quota = Quota("t1", "team", "research", daily=50_000)
    clock = Clock.at(calendar.timegm((2026, 11, 28, 22, 0, 0)))
    error = limits.refusal(quota, DAILY, Usage(day=60_000), clock)
    assert (error.status, error.code) == (429, "insufficient_quota")
    assert "daily budget of team 'research' (USD 0.05)" in error.message
    assert "2026-11-29 00:00 UTC" in error.message
    assert "in 2 h." in error.message  # and how long that is, in words
    promo = (
        "The daily budget of team 'research' (USD 0.05) is spent; it resets at 2026-11-29 00:00 UTC, in 2 h"
    )
    assert error.headers == {"Retry-After": "7200", "x-should-retry": "false", "x-codex-promo-message": promo}
    # Codex stops at once on this type and shows the promo header and the local time of resets_at.
    assert error.error_object()["type"] == "usage_limit_reached"
    assert error.error_object()["resets_at"] == calendar.timegm((2026, 11, 29, 0, 0, 0))


def test_a_token_count_holds_no_turn_slot(settings):
    """Counting input tokens counts against the request rate only: one in flight leaves the turn's slot
    free (on whichever store the settings choose)."""
    from asgiref.sync import async_to_sync

    from proxy.governance.auth import Client

    settings.SLUICE_RATE_WINDOW_SECONDS = 10**6
    client = Client(1, "k", 1, None, None, limits.policy_for(row(42, concurrency=1), None))
    admit = async_to_sync(limits.admit)
    counting = admit(client, "gpt-5.5", REQUEST)
    turn = admit(client, "gpt-5.5")
    with pytest.raises(limits.LimitError):
        admit(client, "gpt-5.5")  # the one slot is the turn's
    counting.release()
    turn.release()


def test_with_redis_unreachable_limits_hold_in_the_process(settings, monkeypatch, caplog):
    """Shared state is an optimisation: without Redis a gateway keeps counting, per process."""
    from asgiref.sync import async_to_sync
    from django.core.cache.backends.redis import RedisCache

    from proxy.governance.auth import Client
    from settings_app import shared
    from tests.conftest import free_port

    settings.SLUICE_RATE_WINDOW_SECONDS = 3600
    dead = RedisCache(f"redis://127.0.0.1:{free_port()}/0", {"OPTIONS": {"socket_connect_timeout": 0.5}})
    monkeypatch.setattr(limits, "_chosen", RedisStore(dead))
    local_store.clear()
    client = Client(1, "k", 1, None, None, limits.policy_for(row(41, rpm=3, concurrency=2), None))
    first = async_to_sync(limits.admit)(client, "gpt-5.5")
    second = async_to_sync(limits.admit)(client, "gpt-5.5")
    with pytest.raises(limits.LimitError) as refused:
        async_to_sync(limits.admit)(client, "gpt-5.5")
    assert "turns in flight" in refused.value.message  # the process counts turns, not only requests
    shared.reset()  # as if Redis had come back: the next admission tries it, fails, and counts here again
    with pytest.raises(limits.LimitError) as again:
        async_to_sync(limits.admit)(client, "gpt-5.5")
    assert "turns in flight" in again.value.message
    assert local_store.usage("k41").slots == 2
    first.release()
    second.release()
    assert local_store.usage("k41").slots == 0, "released where it was admitted"
    assert any("unreachable (ConnectionError" in r.getMessage() for r in caplog.records)
    local_store.clear()
