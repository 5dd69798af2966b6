"""Where the limit counters live: a process-local store on the embedded default, Redis behind Django's
cache in production. Both answer the same two calls: ``take`` (check every quota with ``decide`` and, when
all admit, count the request and hold a slot, atomically) and ``release``."""

import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from proxy.governance.quotas import SLOT_TTL, SOCKET, TURN, Clock, Quota, Usage, decide, free_at

log = logging.getLogger("sluice.limits")


@dataclass(slots=True)
class _Counters:
    hits: deque[tuple[float, int]] = field(default_factory=deque)  # the last window's requests, oldest first
    spent: deque[tuple[float, int]] = field(default_factory=deque)  # and its turns' tokens
    tokens: int = 0  # the sum of ``spent``
    day: int = 0
    day_spend: int = 0
    month: int = 0
    month_spend: int = 0
    slots: dict[str, float] = field(default_factory=dict)
    sockets: dict[str, float] = field(default_factory=dict)

    def roll(self, clock: Clock) -> None:
        gone = clock.now - settings.SLUICE_RATE_WINDOW_SECONDS  # a window old: in no span with now
        while self.hits and self.hits[0][0] <= gone:
            self.hits.popleft()
        while self.spent and self.spent[0][0] <= gone:
            self.tokens -= self.spent.popleft()[1]
        if self.day != clock.day:
            self.day, self.day_spend = clock.day, 0
        if self.month != clock.month:
            self.month, self.month_spend = clock.month, 0

    def usage(self, counts: int, now: float, quota: Quota | None = None) -> Usage:
        slots = self.sockets if counts == SOCKET else self.slots
        if slots and min(slots.values()) <= now:
            for lease in [k for k, until in slots.items() if until <= now]:
                del slots[lease]
        window = settings.SLUICE_RATE_WINDOW_SECONDS
        rpm, tpm = (quota.rpm, quota.tpm) if quota is not None else (None, None)
        return Usage(
            len(self.hits),
            self.tokens,
            len(slots),
            self.day_spend,
            self.month_spend,
            free_at(self.hits, len(self.hits), rpm, window),
            free_at(self.spent, self.tokens, tpm, window),
        )


class LocalStore:
    """Counters of the embedded default (one process). They live beside the local-memory cache rather than
    in it: that cache pickles every value and culls entries beyond its size, and a culled counter is a
    limit lifted."""

    local = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, _Counters] = {}

    def _of(self, scope: str, clock: Clock) -> _Counters:
        counters = self.counters.get(scope)
        if counters is None:
            counters = self.counters[scope] = _Counters()
        counters.roll(clock)
        return counters

    def take(
        self, quotas: tuple[Quota, ...], counts: int, lease: str, clock: Clock, reserve: int = 0
    ) -> tuple[int, int, list[Usage]]:
        with self.lock:
            all_counters = [self._of(q.scope, clock) for q in quotas]
            usages = [c.usage(counts, clock.now, q) for c, q in zip(all_counters, quotas, strict=True)]
            for index, (quota, usage) in enumerate(zip(quotas, usages, strict=True)):
                what = decide(quota, usage, counts)
                if what:
                    return what, index, usages
            for counters in all_counters:
                if counts != SOCKET:
                    counters.hits.append((clock.now, 1))
                counters.day_spend += reserve  # held against the budgets until the turn settles
                counters.month_spend += reserve
                if lease:
                    (counters.sockets if counts == SOCKET else counters.slots)[lease] = clock.now + SLOT_TTL
            return 0, 0, usages

    def release(
        self,
        quotas: tuple[Quota, ...],
        counts: int,
        lease: str,
        tokens: int,
        spend: int,
        clock: Clock,
        reserved: int = 0,
        reserved_at: Clock | None = None,
    ) -> None:
        with self.lock:
            for quota in quotas:
                counters = self._of(quota.scope, clock)
                (counters.sockets if counts == SOCKET else counters.slots).pop(lease, None)
                if reserved and reserved_at is not None:  # in the day and month it was reserved in
                    if counters.day == reserved_at.day:
                        counters.day_spend = max(counters.day_spend - reserved, 0)
                    if counters.month == reserved_at.month:
                        counters.month_spend = max(counters.month_spend - reserved, 0)
                if tokens:
                    counters.spent.append((clock.now, tokens))
                    counters.tokens += tokens
                counters.day_spend += spend
                counters.month_spend += spend

    def usage(self, scope: str, clock: Clock | None = None) -> Usage:
        clock = clock or Clock.at(time.time())
        with self.lock:
            counters = self._of(scope, clock)
            usage = counters.usage(TURN, clock.now)
            usage.slots = len(counters.slots)
            return usage

    def sockets(self, scope: str) -> int:
        with self.lock:
            return len(self._of(scope, Clock.at(time.time())).sockets)

    def seed(self, scope: str, day: int, month: int, clock: Clock) -> None:
        with self.lock:
            counters = self._of(scope, clock)
            counters.day_spend += day
            counters.month_spend += month

    def clear(self) -> None:
        with self.lock:
            self.counters.clear()


# KEYS, six per quota: requests (a sorted set of ids by instant), tokens (of "id:tokens" by instant), slots
# (a sorted set of leases by expiry), day spend, month spend, the tokens' sum. ARGV: quota count, now, what
# is counted, lease, lease expiry, window, this request's id, then five limits per quota (daily, monthly,
# rpm, tpm, slots; -1 for none), then the micro-USD to reserve against the budgets. Returns what ran out,
# the quota's index, then per quota its five counters as they stood and when requests and tokens free up
# (strings: Lua would cut a number to an integer). The same rule as ``decide`` and ``free_at``.
_TAKE = """
local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local counts = tonumber(ARGV[3])
local lease = ARGV[4]
local window = tonumber(ARGV[6])
local ttl = math.ceil(window) + 1
local reserve = tonumber(ARGV[8 + n * 5])
local gone = now - window
local function amount(member)
  return tonumber(string.match(member, ':(%d+)$'))
end
local function free(key, held, limit, weighted)
  if held <= 0 then return '0' end
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if limit <= 0 or held < limit then return tostring(tonumber(last[2]) + window) end
  if not weighted then
    local e = redis.call('ZRANGE', key, held - limit, held - limit, 'WITHSCORES')
    return tostring(tonumber(e[2]) + window)
  end
  local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for j = 1, #all, 2 do
    held = held - amount(all[j])
    if held < limit then return tostring(tonumber(all[j + 1]) + window) end
  end
  return tostring(tonumber(last[2]) + window)
end
local out = {0, 0}
for i = 0, n - 1 do
  local k = i * 6
  local a = 7 + i * 5
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', gone)
  local old = redis.call('ZRANGEBYSCORE', KEYS[k + 2], '-inf', gone)
  if #old > 0 then
    local drop = 0
    for _, m in ipairs(old) do drop = drop + amount(m) end
    redis.call('DECRBY', KEYS[k + 6], drop)
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '-inf', gone)
  end
  local c = {
    redis.call('ZCARD', KEYS[k + 1]),
    math.max(tonumber(redis.call('GET', KEYS[k + 6]) or '0'), 0),
    redis.call('ZCARD', KEYS[k + 3]),
    tonumber(redis.call('GET', KEYS[k + 4]) or '0'),
    tonumber(redis.call('GET', KEYS[k + 5]) or '0'),
  }
  local daily, monthly = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local rpm, tpm, slots = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  for j = 1, 5 do out[#out + 1] = c[j] end
  out[#out + 1] = free(KEYS[k + 1], c[1], rpm, false)
  out[#out + 1] = free(KEYS[k + 2], c[2], tpm, true)
  if out[1] == 0 then
    local what = 0
    if counts == 2 then
      if slots >= 0 and c[3] >= slots then what = 5 end
    elseif daily >= 0 and c[4] >= daily then what = 1
    elseif monthly >= 0 and c[5] >= monthly then what = 2
    elseif rpm >= 0 and c[1] >= rpm then what = 3
    elseif tpm >= 0 and c[2] >= tpm then what = 4
    elseif counts == 1 and slots >= 0 and c[3] >= slots then what = 5
    end
    if what > 0 then out[1] = what; out[2] = i end
  end
end
if out[1] == 0 then
  for i = 0, n - 1 do
    local k = i * 6
    if counts ~= 2 then
      redis.call('ZADD', KEYS[k + 1], now, ARGV[7])
      redis.call('EXPIRE', KEYS[k + 1], ttl)
    end
    if lease ~= '' then
      redis.call('ZADD', KEYS[k + 3], tonumber(ARGV[5]), lease)
      redis.call('EXPIRE', KEYS[k + 3], SLOT_TTL)
    end
    if reserve > 0 then
      redis.call('INCRBY', KEYS[k + 4], reserve)
      redis.call('EXPIRE', KEYS[k + 4], 172800)
      redis.call('INCRBY', KEYS[k + 5], reserve)
      redis.call('EXPIRE', KEYS[k + 5], 2764800)
    end
  end
end
return out
""".replace("SLOT_TTL", str(SLOT_TTL))


# KEYS as for _TAKE and two more per quota: the day and month spend of when the turn was admitted; ARGV:
# lease, tokens, micro-USD spent, window, micro-USD reserved, now. One command, whatever the quotas.
_RELEASE = """
local tokens, spend, reserved = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local ttl = math.ceil(tonumber(ARGV[4])) + 1
for k = 0, #KEYS - 1, 8 do
  if ARGV[1] ~= '' then redis.call('ZREM', KEYS[k + 3], ARGV[1]) end
  if reserved > 0 then
    for j = 7, 8 do
      local held = tonumber(redis.call('GET', KEYS[k + j]) or '0')
      if held > 0 then redis.call('DECRBY', KEYS[k + j], math.min(held, reserved)) end
    end
  end
  if tokens > 0 then
    redis.call('ZADD', KEYS[k + 2], ARGV[6], ARGV[1] .. ':' .. tokens)
    redis.call('INCRBY', KEYS[k + 6], tokens)
    redis.call('EXPIRE', KEYS[k + 2], ttl)
    redis.call('EXPIRE', KEYS[k + 6], ttl)
  end
  if spend > 0 then
    redis.call('INCRBY', KEYS[k + 4], spend)
    redis.call('EXPIRE', KEYS[k + 4], 172800)
    redis.call('INCRBY', KEYS[k + 5], spend)
    redis.call('EXPIRE', KEYS[k + 5], 2764800)
  end
end
return 0
"""


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class RedisStore:
    """Counters in the Redis behind Django's cache: one script per admission, one per release."""

    local = False

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.script: Any = None
        self.give_back: Any = None
        self.client: Any = None
        self.pending: dict[str, concurrent.futures.Future] = {}  # scope -> its latest release

    def _client(self) -> Any:
        # One client object for the process: Django's backend builds a new one (with its table of response
        # callbacks) on every call, which costs more CPU than the round trip itself. The client is
        # thread-safe; its connection pool is Django's.
        if self.client is None:
            self.client = self.cache._cache.get_client(write=True)
        return self.client

    def keys(self, scope: str, counts: int, clock: Clock) -> list[str]:
        make = self.cache.make_key
        slots = "s" if counts == SOCKET else "c"
        return [
            make(f"sluice:rl:{scope}:rq"),
            make(f"sluice:rl:{scope}:tk"),
            make(f"sluice:rl:{scope}:{slots}"),
            make(f"sluice:rl:{scope}:d:{clock.day}"),
            make(f"sluice:rl:{scope}:m:{clock.month}"),
            make(f"sluice:rl:{scope}:tks"),
        ]

    def take(
        self, quotas: tuple[Quota, ...], counts: int, lease: str, clock: Clock, reserve: int = 0
    ) -> tuple[int, int, list[Usage]]:
        client = self._client()
        if self.script is None:
            self.script = client.register_script(_TAKE)
        keys: list[str] = []
        args: list[Any] = [
            len(quotas),
            repr(clock.now),
            counts,
            lease,
            clock.now + SLOT_TTL,
            repr(float(settings.SLUICE_RATE_WINDOW_SECONDS)),
            lease or os.urandom(8).hex(),  # the request's entry in the window: unique
        ]
        for q in quotas:
            keys += self.keys(q.scope, counts, clock)
            slots = q.sockets if counts == SOCKET else q.concurrency
            args += [_limit(q.daily), _limit(q.monthly), _limit(q.rpm), _limit(q.tpm), _limit(slots)]
        args.append(reserve)
        out = self.script(keys=keys, args=args, client=client)
        usages = [
            Usage(*(int(v) for v in out[2 + 7 * i : 7 + 7 * i]), float(out[7 + 7 * i]), float(out[8 + 7 * i]))
            for i in range(len(quotas))
        ]
        return int(out[0]), int(out[1]), usages

    def release(
        self,
        quotas: tuple[Quota, ...],
        counts: int,
        lease: str,
        tokens: int,
        spend: int,
        clock: Clock,
        reserved: int = 0,
        reserved_at: Clock | None = None,
    ) -> None:
        future = executor.submit(
            self._release, quotas, counts, lease, tokens, spend, clock, reserved, reserved_at or clock
        )
        scopes = [q.scope for q in quotas]
        for scope in scopes:
            self.pending[scope] = future

        def done(f: concurrent.futures.Future) -> None:
            for scope in scopes:
                if self.pending.get(scope) is f:
                    self.pending.pop(scope, None)

        future.add_done_callback(done)

    def releasing(self, quotas: tuple[Quota, ...]) -> list[concurrent.futures.Future]:
        """Releases of these quotas still on their way to Redis: a turn that follows another on the same
        key must not be refused for the slot its predecessor is giving back."""
        return [f for q in quotas if (f := self.pending.get(q.scope)) is not None and not f.done()]

    def _release(
        self,
        quotas: tuple[Quota, ...],
        counts: int,
        lease: str,
        tokens: int,
        spend: int,
        clock: Clock,
        reserved: int,
        reserved_at: Clock,
    ) -> None:
        try:
            client = self._client()
            if self.give_back is None:
                self.give_back = client.register_script(_RELEASE)
            keys: list[str] = []
            for q in quotas:
                keys += self.keys(q.scope, counts, clock) + self.keys(q.scope, counts, reserved_at)[3:5]
            window = repr(float(settings.SLUICE_RATE_WINDOW_SECONDS))
            args = [lease, tokens, spend, window, reserved, repr(clock.now)]
            self.give_back(keys=keys, args=args, client=client)
        except Exception:  # noqa: BLE001 - logged; a lease left behind expires on its own
            log.warning("could not release a limit admission in Redis", exc_info=True)

    def usage(self, scope: str, clock: Clock | None = None) -> Usage:
        clock = clock or Clock.at(time.time())
        keys = self.keys(scope, TURN, clock)
        gone = clock.now - settings.SLUICE_RATE_WINDOW_SECONDS
        client = self._client()
        pipe = client.pipeline(transaction=False)
        pipe.zcount(keys[0], f"({gone!r}", "+inf")
        pipe.zrangebyscore(keys[1], f"({gone!r}", "+inf")
        pipe.zcount(keys[2], clock.now, "+inf")
        pipe.get(keys[3])
        pipe.get(keys[4])
        requests, spent, slots, day, month = pipe.execute()
        tokens = sum(int(m.rsplit(b":", 1)[1]) for m in spent)
        return Usage(int(requests), tokens, int(slots), int(day or 0), int(month or 0))

    def sockets(self, scope: str) -> int:
        clock = Clock.at(time.time())
        return int(self._client().zcount(self.keys(scope, SOCKET, clock)[2], clock.now, "+inf"))

    def seed(self, scope: str, day: int, month: int, clock: Clock) -> None:
        # Only where the counter does not exist yet: Redis's own counters are the better record.
        keys = self.keys(scope, TURN, clock)
        pipe = self._client().pipeline(transaction=False)
        pipe.set(keys[3], day, nx=True, ex=2 * 86400)
        pipe.set(keys[4], month, nx=True, ex=32 * 86400)
        pipe.execute()

    def clear(self) -> None:
        pass  # the cache's clear() empties Redis


executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="sluice-limits")
local_store = LocalStore()
