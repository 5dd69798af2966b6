"""Limits, budgets and model access of keys and teams, checked before every turn.

A key's policy is built once, when the key snapshot loads: the key's own limits and its team's, each a
``Quota`` with its own counters, so the tighter one wins. ``admit`` takes one cache round trip (a Lua
script on Redis, a lock on the process-local store of the embedded default) and returns an ``Admission``
whose ``release`` gives back the turn's slot and adds its tokens and spend from the terminal event's
usage. ``release`` is synchronous and idempotent, so any exit path can call it, and a forgotten admission
still releases when it is garbage-collected.

The counters live in ``proxy.governance.limit_stores``. The decision itself (``proxy.governance.quotas``) is a
pure function of the limits and the counters as they stand: sliding windows of ``SLUICE_RATE_WINDOW_SECONDS``
for requests and tokens (each request, and each turn's tokens, kept with its instant until it is a window old,
so no span of that length ever holds more than the limit; ``free_at`` says when one more fits), slots for
turns in flight and open sockets (leases that expire, so a process that dies cannot hold them for
ever), and spend per UTC day and month in micro-dollars. A budget never cuts a turn in flight: a turn
reserves its estimated cost at admission (``estimate``), in the same atomic step that checks the
budget, and its release settles it: the reservation given back, the real spend added.
"""

import asyncio
import datetime as dt
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.db.models import Q, Sum

from proxy.common.outcome import Outcome
from proxy.common.record import UNGOVERNED
from proxy.common.wire import WireError
from proxy.governance.limit_stores import RedisStore, executor, local_store
from proxy.governance.prices import model_prices, price_for
from proxy.governance.quotas import (
    DAILY,
    MONTHLY,
    REQUEST,
    REQUESTS,
    SLOTS,
    SOCKET,
    TURN,
    Clock,
    Quota,
    Usage,
)
from proxy.governance.refusals import Refusal, budget_refusal, model_refusal_message
from proxy.models import RequestLog
from settings_app import shared

log = logging.getLogger("sluice.limits")

MICRO = 1_000_000


@dataclass(frozen=True, slots=True)
class Policy:
    quotas: tuple[Quota, ...]
    models: frozenset[str] | None = None  # None: every model
    team_disabled: bool = False
    team_name: str = ""
    budgets: bool = False
    team_models: frozenset[str] | None = None  # the team's own list, to say who refused a model

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def micro_usd(value: Decimal | None) -> int | None:
    return None if value is None else int(value * MICRO)


def quota_of(scope: str, kind: str, obj: Any) -> Quota | None:
    """The quota of a key or team row; None when it sets no counted limit."""
    quota = Quota(
        scope,
        kind,
        obj.name,
        obj.rpm,
        obj.tpm,
        obj.concurrency,
        obj.sockets,
        micro_usd(obj.daily_budget),
        micro_usd(obj.monthly_budget),
    )
    limited = (quota.rpm, quota.tpm, quota.concurrency, quota.sockets, quota.daily, quota.monthly)
    return quota if any(v is not None for v in limited) else None


def policy_for(key: Any, team: Any | None) -> Policy | None:
    """A key's policy, or None when neither it nor its team limits anything (then admission costs nothing)."""
    quotas = [q for q in (quota_of(f"k{key.pk}", "key", key),) if q is not None]
    allowed = [set(key.allowed_models)] if key.allowed_models else []
    if team is not None:
        team_quota = quota_of(f"t{team.pk}", "team", team)
        if team_quota is not None:
            quotas.append(team_quota)
        if team.allowed_models:
            allowed.append(set(team.allowed_models))
    disabled = team is not None and not team.enabled
    if not quotas and not allowed and not disabled:
        return None
    models = frozenset(set.intersection(*allowed)) if allowed else None
    budgets = any(q.daily is not None or q.monthly is not None for q in quotas)
    team_models = frozenset(team.allowed_models) if team is not None and team.allowed_models else None
    team_name = team.name if team is not None else ""
    return Policy(tuple(quotas), models, disabled, team_name, budgets, team_models)


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: "6m0s", "12s", "0.5s"."""
    if seconds < 1:
        return f"{max(seconds, 0.001):.3g}s"
    seconds = math.ceil(seconds)
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


# ----- refusals and headers -----


class LimitError(Refusal):
    """A refusal by a limit, a budget or the model allow-list, with the headers that tell the client when
    to come back (proxy/governance/refusals.py says how each is shaped for Codex and the SDK)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str], **shape: Any) -> None:
        shape.setdefault("type", "insufficient_quota" if code == "insufficient_quota" else "requests")
        super().__init__(status, code, message, headers, **shape)


def refusal(quota: Quota, what: int, usage: Usage, clock: Clock) -> LimitError:
    who = f"{quota.kind} '{quota.name}'"
    if what in (DAILY, MONTHLY):
        daily = what == DAILY
        budget = Decimal(quota.daily if daily else quota.monthly) / MICRO  # type: ignore[arg-type]
        message, headers, extra = budget_refusal(
            kind=quota.kind,
            name=quota.name,
            daily=daily,
            budget_usd=f"{budget:.2f}",
            ends=clock.day_ends if daily else clock.month_ends,
            now=clock.now,
        )
        # Codex shows its own words for insufficient_quota and nothing of the message: under this type it
        # shows x-codex-promo-message and the reset time instead, and stops just the same.
        return LimitError(
            429, "insufficient_quota", message, headers, type="usage_limit_reached", extra=extra
        )
    if what == SLOTS:
        message = f"Too many turns in flight for {who}: at most {quota.concurrency} at once."
        headers = {"Retry-After": "1"}
    else:
        per = settings.SLUICE_RATE_WINDOW_SECONDS
        limit, noun = (quota.rpm, "requests") if what == REQUESTS else (quota.tpm, "tokens")
        period = "minute" if per == 60 else f"{per:g} seconds"
        free = usage.requests_free if what == REQUESTS else usage.tokens_free
        wait = free - clock.now if free else per  # nothing to wait out: a limit of 0
        message = f"Rate limit reached for {who}: {limit} {noun} per {period}. Try again in {duration(wait)}."
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
    return LimitError(429, "rate_limit_exceeded", message, headers)


def socket_refusal(quota: Quota) -> LimitError:
    return LimitError(
        429,
        "rate_limit_exceeded",
        f"Too many open WebSocket connections for {quota.kind} '{quota.name}': at most {quota.sockets}.",
        {"Retry-After": "1"},
    )


def rate_headers(
    quotas: tuple[Quota, ...], usages: list[Usage], clock: Clock, counted: bool
) -> dict[str, str]:
    """The x-ratelimit-* headers of the tightest request and token limits, after this request. A reset is
    when the sliding window frees up (``free_at``): one counted now leaves it a window from now."""
    headers: dict[str, str] = {}
    best: tuple[int, int, float] | None = None
    tokens: tuple[int, int, float] | None = None
    for quota, usage in zip(quotas, usages, strict=True):
        if quota.rpm is not None:
            left = max(quota.rpm - usage.requests - counted, 0)
            if best is None or left < best[1]:
                free = clock.now + settings.SLUICE_RATE_WINDOW_SECONDS if counted else usage.requests_free
                best = (quota.rpm, left, free)
        if quota.tpm is not None:
            left = max(quota.tpm - usage.tokens, 0)
            if tokens is None or left < tokens[1]:
                tokens = (quota.tpm, left, usage.tokens_free)
    if best is not None:
        headers["x-ratelimit-limit-requests"] = str(best[0])
        headers["x-ratelimit-remaining-requests"] = str(best[1])
        headers["x-ratelimit-reset-requests"] = duration(max(best[2] - clock.now, 0))
    if tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(tokens[0])
        headers["x-ratelimit-remaining-tokens"] = str(tokens[1])
        headers["x-ratelimit-reset-tokens"] = duration(max(tokens[2] - clock.now, 0))
    return headers


# ----- the admission -----

_lease_ids = itertools.count(1)
_process = f"{os.getpid()}-{os.urandom(3).hex()}"


class Admission:
    """What one turn (or socket) holds until ``release``: its slots, and how to account for its usage."""

    __slots__ = ("quotas", "counts", "lease", "headers", "prices", "released", "store", "reserved", "clock")

    def __init__(
        self,
        quotas: tuple[Quota, ...],
        counts: int,
        lease: str,
        headers: dict[str, str],
        prices: dict | None,
        store: Any = None,
        reserved: int = 0,
        clock: "Clock | None" = None,
    ) -> None:
        self.store = store  # the store that admitted it (the local one while Redis is unreachable)
        self.reserved = reserved  # micro-USD held against the budgets until the turn settles
        self.clock = clock  # when it was reserved: the day and month the reservation is counted in
        self.quotas = quotas
        self.counts = counts
        self.lease = lease
        self.headers = headers
        self.prices = prices
        self.released = not quotas

    def release(self, record: Any = None) -> None:
        """Give back the slot and the reservation, and add the turn's tokens and spend; safe to call more
        than once."""
        if self.released:
            return
        self.released = True
        tokens = spend = 0
        if record is not None and self.counts == TURN:
            o = record.outcome
            tokens = o.input_tokens + o.output_tokens
            if self.prices is not None and tokens:
                spend = spend_of(self.prices, o.model or record.upstream_model, o)
        try:
            store = self.store or _store()
            store.release(
                self.quotas,
                self.counts,
                self.lease,
                tokens,
                spend,
                Clock.at(time.time()),
                self.reserved,
                self.clock,
            )
        except Exception:  # noqa: BLE001 - the cache being gone must not fail the turn
            log.warning("could not release a limit admission", exc_info=True)

    # Mutation testing leaves the finaliser as written: a wrapper around it would run inside the garbage
    # collector, in the middle of the tool's own bookkeeping (docs/testing.md).
    def __del__(self) -> None:  # pragma: no mutate block
        if not self.released:
            log.warning("a limit admission was never released; releasing it now")
            self.release()


UNLIMITED = Admission((), TURN, "", {}, None)


# The rates of the price table seen last, by model. Keyed by the table object itself, held here: a key of
# ``id(prices)`` would outlive a reloaded table whose id the next one reuses, and price turns at old rates.
_rates: tuple[dict | None, dict[str, tuple[float, float, float] | None]] = (None, {})


def spend_of(prices: dict, model: str, outcome: Any) -> int:
    """A turn's cost in micro-USD (0 when the model has no price: the request log says so)."""
    global _rates
    table, by_model = _rates
    if table is not prices:
        by_model = {}
        _rates = (prices, by_model)  # one assignment: a concurrent caller sees a table with its own rates
    rates = by_model.get(model, False)
    if rates is False:
        price = price_for(prices, model)
        rates = price.rates() if price is not None else None
        if len(by_model) > 4096:  # model names come from upstream answers: keep the cache bounded
            by_model.clear()
        by_model[model] = rates
    if rates is None:
        return 0
    cached = min(outcome.cached_input_tokens, outcome.input_tokens)
    usd = (outcome.input_tokens - cached) * rates[0] + cached * rates[1] + outcome.output_tokens * rates[2]
    return math.ceil(usd * MICRO)


def estimate(body: dict[str, Any] | None, size: int) -> tuple[int, int]:
    """A turn's tokens as guessed before it runs: its request's size in bytes / 4 as input, and its
    ``max_output_tokens`` (else SLUICE_BUDGET_OUTPUT_TOKENS) as output."""
    ceiling = (body or {}).get("max_output_tokens")
    if not isinstance(ceiling, int) or isinstance(ceiling, bool) or ceiling <= 0:
        ceiling = settings.SLUICE_BUDGET_OUTPUT_TOKENS
    return size // 4, min(ceiling, 10_000_000)


def reservation(prices: dict, model: str | None, guess: tuple[int, int]) -> int:
    """The estimated cost in micro-USD of a turn of ``model`` (0 for a model without a price)."""
    if not model or guess == (0, 0):
        return 0
    return spend_of(prices, model, Outcome(input_tokens=guess[0], output_tokens=guess[1]))


async def admit(
    client: Any, model: str | None, counts: int = TURN, guess: tuple[int, int] = (0, 0)
) -> Admission:
    """Admit one turn (or, with REQUEST, one request that counts against the rate only) of ``client``;
    raise a ``WireError`` when a limit, a budget, the model allow-list or a disabled team refuses it.
    A turn under a budget reserves the cost of ``guess`` (see ``estimate``) until it is released."""
    policy: Policy | None = client.policy
    if policy is None or UNGOVERNED:
        return UNLIMITED
    if policy.team_disabled:
        raise WireError(403, "team_disabled", f"The team '{policy.team_name}' of this API key is disabled.")
    if model is not None and not policy.allows(model):
        by_team = policy.team_models is not None and model not in policy.team_models
        message = model_refusal_message(
            model,
            key_name=getattr(client, "key_name", ""),
            team_name=policy.team_name,
            by_team=by_team,
            allowed=policy.models,
        )
        # On the wire the service's code for a model one may not use: Codex ends the turn at once on it and
        # shows the message; any other 403 it retries ten times.
        raise LimitError(
            403,
            "model_not_allowed",
            message,
            {},
            param="model",
            type="invalid_request_error",
            wire_code="model_not_found",
        )
    if not policy.quotas:
        return UNLIMITED
    prices = None
    reserve = 0
    if policy.budgets and counts == TURN:
        prices = await model_prices.aget()
        reserve = reservation(prices, model, guess)
    return await _take(policy.quotas, counts, prices, reserve)


async def count_invalid(client: Any, error: WireError) -> WireError:
    """An invalid request (or WebSocket turn) of a rate-limited key counts against its rate like a valid
    one: ``error``, or the 429 once the rate is used up (a flood of bad requests costs the key, not the
    request log)."""
    if client.policy is None:
        return error
    try:
        (await admit(client, None, REQUEST)).release()
    except LimitError as refused:
        return refused
    except WireError:  # a disabled team: the request's own error says what is wrong with it
        pass
    return error


async def admit_socket(client: Any) -> Admission:
    """Admit one WebSocket connection of ``client`` (before the upgrade is accepted)."""
    policy: Policy | None = client.policy
    if policy is None or UNGOVERNED:
        return UNLIMITED
    if policy.team_disabled:
        raise WireError(403, "team_disabled", f"The team '{policy.team_name}' of this API key is disabled.")
    quotas = tuple(q for q in policy.quotas if q.sockets is not None)
    return await _take(quotas, SOCKET, None) if quotas else UNLIMITED


async def _take(quotas: tuple[Quota, ...], counts: int, prices: dict | None, reserve: int = 0) -> Admission:
    lease = "" if counts == REQUEST else f"{_process}-{next(_lease_ids)}"
    clock = Clock.at(time.time())
    store = _store()
    if not store.local and shared.degraded():
        # Redis is known to be unavailable: count in this process at once, no wait on a dead cache.
        store = local_store
    if store.local:
        what, index, usages = store.take(quotas, counts, lease, clock, reserve)
    else:
        for release in store.releasing(quotas):
            await asyncio.wrap_future(release)
        # The script may run to the end after this task is cancelled: give back what it took.
        future = asyncio.get_running_loop().run_in_executor(
            executor, store.take, quotas, counts, lease, clock, reserve
        )
        try:
            what, index, usages = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: _abandoned(f, quotas, counts, lease, clock, reserve))
            raise
        except Exception as exc:  # noqa: BLE001 - Redis unreachable: limits hold per process meanwhile
            shared.report_failure(exc)  # logged once per outage; later turns skip Redis until it is back
            store = local_store
            what, index, usages = store.take(quotas, counts, lease, clock, reserve)
    if what:
        quota = quotas[index]
        error = socket_refusal(quota) if counts == SOCKET else refusal(quota, what, usages[index], clock)
        error.headers.update(rate_headers(quotas, usages, clock, counted=False))
        raise error
    headers = rate_headers(quotas, usages, clock, counted=True)
    return Admission(quotas, counts, lease, headers, prices, store, reserve, clock)


def _abandoned(
    future: "asyncio.Future[Any]",
    quotas: tuple[Quota, ...],
    counts: int,
    lease: str,
    clock: Clock,
    reserve: int,
) -> None:
    if not future.cancelled() and future.exception() is None and not future.result()[0]:
        Admission(quotas, counts, lease, {}, None, None, reserve, clock).release()


_chosen: Any = None


def _store() -> Any:
    """The store for Django's default cache (a LocalStore or a RedisStore), chosen once per process."""
    global _chosen
    if _chosen is None:
        cache = caches["default"]
        _chosen = local_store if isinstance(cache, LocMemCache) else RedisStore(cache)
    return _chosen


def usage(scope: str) -> Usage:
    """Current counters of a key ("k12") or team ("t3"), for the admin."""
    return _store().usage(scope)


def open_sockets(scope: str) -> int:
    return _store().sockets(scope)


async def ausage(scope: str) -> Usage:
    return await sync_to_async(usage, thread_sensitive=False)(scope)


_seeded: set[str] = set()


def seed_spend(quotas: list[Quota]) -> None:
    """Start the spend counters from the request log the first time this process sees a budget: a restart
    (of the embedded default, or of a Redis without persistence) must not hand out a day's budget twice.
    Called where the key snapshot loads, off the event loop."""
    store = _store()
    todo = [q for q in quotas if (q.daily is not None or q.monthly is not None) and q.scope not in _seeded]
    if not todo:
        return
    clock = Clock.at(time.time())
    year, month = divmod(clock.month, 100)
    month_start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    day_start = dt.datetime.fromtimestamp(clock.day_ends - 86400, dt.UTC)
    for column, prefix in (("api_key_id", "k"), ("team_id", "t")):
        ids = [int(q.scope[1:]) for q in todo if q.scope[0] == prefix]
        if not ids:
            continue
        rows = (
            RequestLog.objects.filter(created_at__gte=month_start, **{f"{column}__in": ids})
            .values(column)
            .annotate(month=Sum("cost"), day=Sum("cost", filter=Q(created_at__gte=day_start)))
        )
        for row in rows:
            day, month_total = (micro_usd(row["day"]) or 0, micro_usd(row["month"]) or 0)
            store.seed(f"{prefix}{row[column]}", day, month_total, clock)
    _seeded.update(q.scope for q in todo)


def reset_local() -> None:
    """Forget this process's counters (tests: a cleared cache starts from nothing)."""
    local_store.clear()
    _seeded.clear()
