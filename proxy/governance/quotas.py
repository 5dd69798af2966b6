"""The counted limits on their own: a quota, its counters as they stand, the clock of their periods, and
the decision (``decide``), a pure function of the three. The admission (``proxy.governance.limits``) and the
stores that keep the counters (``proxy.governance.limit_stores``) both build on it."""

import calendar
import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings

TURN, REQUEST, SOCKET = 1, 0, 2  # what an admission counts: a turn (rate + slot), rate only, a socket
SLOT_TTL = 6 * 3600  # a lease nobody released (a process killed mid-turn) frees itself after this


@dataclass(frozen=True, slots=True)
class Quota:
    """The limits of one key or one team, and the name of the counters they are checked against."""

    scope: str  # "k12", "t3"
    kind: str  # "key" or "team", for messages
    name: str
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    sockets: int | None = None
    daily: int | None = None  # micro-USD
    monthly: int | None = None


@dataclass(slots=True)
class Usage:
    """A quota's counters as they stand: the requests and tokens of the last window, slots held, this UTC
    day's and month's spend in micro-USD, and (see ``free_at``) when the requests and tokens free up."""

    requests: int = 0
    tokens: int = 0
    slots: int = 0
    day: int = 0
    month: int = 0
    requests_free: float = 0.0
    tokens_free: float = 0.0


# What ran out, in the order it is checked: a spent budget first (retrying soon will not help).
DAILY, MONTHLY, REQUESTS, TOKENS, SLOTS = 1, 2, 3, 4, 5


def decide(quota: Quota, usage: Usage, counts: int) -> int:
    """0 when ``quota`` admits one more of ``counts`` (TURN, REQUEST, SOCKET), else what ran out."""
    if counts == SOCKET:
        return SLOTS if quota.sockets is not None and usage.slots >= quota.sockets else 0
    if quota.daily is not None and usage.day >= quota.daily:
        return DAILY
    if quota.monthly is not None and usage.month >= quota.monthly:
        return MONTHLY
    if quota.rpm is not None and usage.requests >= quota.rpm:
        return REQUESTS
    if quota.tpm is not None and usage.tokens >= quota.tpm:
        return TOKENS
    if counts == TURN and quota.concurrency is not None and usage.slots >= quota.concurrency:
        return SLOTS
    return 0


def free_at(entries: "Sequence[tuple[float, int]]", held: int, limit: int | None, window: float) -> float:
    """When the sliding window of ``entries`` (instant, amount; oldest first, none older than a window;
    ``held`` their sum, kept by the caller) frees up: at its limit, the instant enough of the oldest have
    left it for one more; below, the instant it is empty again (0.0 when it is already). A limit of 0
    never frees: the newest entry's expiry. Walks only the entries that must leave."""
    if not entries:
        return 0.0
    if limit is None or limit <= 0 or held < limit:
        return entries[-1][0] + window
    for stamp, amount in entries:
        held -= amount
        if held < limit:
            return stamp + window
    return entries[-1][0] + window


# ----- time -----


@dataclass(frozen=True, slots=True)
class Clock:
    """The counters' periods at one instant: the rate window, the UTC day and month, and when each ends."""

    now: float
    window: int
    window_ends: float
    day: int  # 20261128
    month: int  # 202611
    day_ends: float
    month_ends: float

    @classmethod
    def at(cls, now: float) -> "Clock":
        length = settings.SLUICE_RATE_WINDOW_SECONDS
        window = int(now // length)
        day = _days.get(int(now // 86400))
        if day is None:
            day = _day_of(now)
        return cls(now, window, (window + 1) * length, *day)


_days: dict[int, tuple[int, int, float, float]] = {}


def _day_of(now: float) -> tuple[int, int, float, float]:
    """The UTC day and month of ``now`` and when each ends, computed once a day."""
    t = time.gmtime(now)
    midnight = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    day = (
        t.tm_year * 10000 + t.tm_mon * 100 + t.tm_mday,
        t.tm_year * 100 + t.tm_mon,
        float(midnight),
        float(calendar.timegm((year, month, 1, 0, 0, 0))),
    )
    if len(_days) > 4:
        _days.clear()
    _days[int(now // 86400)] = day
    return day
