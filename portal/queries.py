"""Every portal query starts here, filtered by the signed-in person (or, for a lead, the teams they lead).

A request-log row is a person's when its ``owner`` is them, or, for rows written before owners were
recorded, when its key is theirs. The aggregates are the usage dashboard's own (``proxy.admin.dashboard``),
run over those rows only.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from identity.models import Membership, Role
from proxy.admin import dashboard
from proxy.governance import limits
from proxy.models import ApiKey, RequestLog, Team

DAYS = 30
SESSIONS_SHOWN = 50


def memberships(user: Any) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("team").order_by("team__name")


def led_team_ids(user: Any) -> list[int]:
    return list(Membership.objects.filter(user=user, role=Role.LEAD).values_list("team_id", flat=True))


def own_keys(user: Any) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(owner=user).select_related("team").order_by("-created_at")


def own_rows(user: Any, f: dashboard.Filters) -> QuerySet[RequestLog]:
    """The person's request-log rows of the range: owned, or (owner not recorded) made with one of their
    keys. The range is repeated in each branch of the OR so that each reads an index of its own
    instead of every row of the range through the table."""
    start = dt.datetime.combine(f.start, dt.time.min, dt.UTC)
    end = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time.min, dt.UTC)
    key_ids = list(ApiKey.objects.filter(owner=user).values_list("pk", flat=True))
    when = Q(created_at__gte=start, created_at__lt=end)
    # "owner is NULL or this person" (the same rows as "owner is NULL" once the first branch is there):
    # an OR no index serves, so that the second branch reads the key index, never every ownerless row.
    by_key = Q(api_key_id__in=key_ids) & (Q(owner__isnull=True) | Q(owner=user)) & when
    return RequestLog.objects.filter((Q(owner=user) & when) | by_key).order_by()


def last_days(days: int = DAYS) -> dashboard.Filters:
    today = timezone.now().astimezone(dt.UTC).date()
    return dashboard.Filters(start=today - dt.timedelta(days=days - 1), end=today)


def in_range(qs: QuerySet[RequestLog], f: dashboard.Filters) -> QuerySet[RequestLog]:
    start = dt.datetime.combine(f.start, dt.time.min, dt.UTC)
    end = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time.min, dt.UTC)
    return qs.filter(created_at__gte=start, created_at__lt=end)


def usage(rows: QuerySet[RequestLog], f: dashboard.Filters, keys: QuerySet[ApiKey]) -> dict[str, Any]:
    """Per day, per model and per key over ``rows`` in the range; only ``keys`` are named (a row of a key
    handed to someone else since is the person's, the key's name is not). ``rows`` are of the range."""
    qs = rows
    days, _transports = dashboard.daily(qs, f)
    totals = {k: sum(d[k] for d in days) for k in dashboard.SUMS}
    # The model first: grouped by a key or owner first, SQLite reads the key's (or owner's) index and
    # the table behind it instead of the team's covering index (ten times slower on a large team).
    ranked = dashboard.tops(qs, ["upstream_model", "api_key_id"], named_only=("upstream_model",))
    names = dict(keys.filter(pk__in=[r["id"] for r in ranked["api_key_id"]]).values_list("pk", "name"))
    for r in ranked["api_key_id"]:
        r["name"] = names.get(r["id"], "—")
    return {"days": days, "totals": totals, "keys": ranked["api_key_id"], "models": ranked["upstream_model"]}


def sessions(rows: QuerySet[RequestLog], f: dashboard.Filters) -> list[dict[str, Any]]:
    """Turns grouped by session (Codex's session header or ``prompt_cache_key``), latest first; ``rows``
    are of the range."""
    out = list(
        rows.exclude(session_id="")
        .values("session_id")
        .annotate(
            first=Min("created_at"),
            last=Max("created_at"),
            turns=Count("pk"),
            input=Coalesce(Sum("input_tokens"), 0),
            output=Coalesce(Sum("output_tokens"), 0),
            cost=Sum("cost"),
            websocket=Count("pk", filter=Q(client_transport="websocket")),
        )
        .order_by("-last")[:SESSIONS_SHOWN]
    )
    for s in out:
        s["tokens"] = s["input"] + s["output"]
        s["transport"] = (
            "websocket" if s["websocket"] == s["turns"] else "http" if s["websocket"] == 0 else "mixed"
        )
    return out


def this_month() -> dashboard.Filters:
    today = timezone.now().astimezone(dt.UTC).date()
    return dashboard.Filters(start=today.replace(day=1), end=today)


def spend(rows: QuerySet[RequestLog]) -> tuple[Decimal, Decimal]:
    """Spend of ``rows`` (of this month) this UTC day and this calendar month."""
    day = timezone.now().astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    got = rows.aggregate(
        month=Coalesce(Sum("cost"), Decimal(0)),
        day=Coalesce(Sum("cost", filter=Q(created_at__gte=day)), Decimal(0)),
    )
    return got["day"], got["month"]


def budget_left(scope: str, obj: Team | ApiKey) -> dict[str, Any] | None:
    """Spend today and this month from the counters admission checks (seeded from the log once per
    process), and what is left of each budget; None when the team or key has no budget."""
    quota = limits.quota_of(scope, "", obj)
    if quota is None or (quota.daily is None and quota.monthly is None):
        return None
    limits.seed_spend([quota])
    counted = limits.usage(scope)
    day, month = Decimal(counted.day) / limits.MICRO, Decimal(counted.month) / limits.MICRO
    return {
        "day": day,
        "month": month,
        "day_left": None if obj.daily_budget is None else max(obj.daily_budget - day, Decimal(0)),
        "month_left": None if obj.monthly_budget is None else max(obj.monthly_budget - month, Decimal(0)),
    }


def keys_held(user: Any, team: Team) -> int:
    """The person's keys in ``team`` that still work: what the team's most-keys rule counts."""
    now = timezone.now()
    return (
        ApiKey.objects.filter(owner=user, team=team, enabled=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .count()
    )


def team_usage(team: Team, f: dashboard.Filters) -> dict[str, Any]:
    """For a lead: the team's spend and tokens per day, by model and by member over the range, from one
    grouping of the team's covering index; rows whose owner was not recorded count for their key's owner."""
    key_owner = dict(ApiKey.objects.filter(team=team).values_list("pk", "owner_id"))
    empty = {k: 0 for k in dashboard.SUMS}
    by_day: dict[str, dict[str, Any]] = {}
    by_model: dict[str, list] = {}
    by_person: dict[int | None, dict[str, Any]] = {}
    rows = (
        in_range(RequestLog.objects.filter(team=team), f)
        .order_by()
        .annotate(day=dashboard.Day("created_at"))
        # The model first: grouped by a key or owner first, SQLite reads that column's index and the
        # table behind it instead of the team's covering index (several times slower).
        .values("upstream_model", "owner_id", "api_key_id", "day")
        .annotate(**dashboard.SUMS)
    )
    for r in rows:
        day = by_day.setdefault(r["day"], dict(empty))
        for k in dashboard.SUMS:
            day[k] += r[k]
        if r["upstream_model"]:
            model = by_model.setdefault(r["upstream_model"], [Decimal(0), 0])
            model[0] += r["cost"]
            model[1] += r["turns"]
        person = by_person.setdefault(
            r["owner_id"] or key_owner.get(r["api_key_id"]), {"cost": Decimal(0), "turns": 0}
        )
        person["cost"] += r["cost"]
        person["turns"] += r["turns"]
    days = [{**empty, **by_day.get(d.isoformat(), {}), "day": d} for d in f.days]
    models = [
        {"name": name, "cost": cost, "turns": turns}
        for name, (cost, turns) in sorted(by_model.items(), key=lambda item: (-item[1][0], -item[1][1]))
    ]
    members = []
    for m in Membership.objects.filter(team=team).select_related("user").order_by("user__username"):
        got = by_person.get(m.user_id, {"cost": Decimal(0), "turns": 0})
        members.append({"user": m.user, "role": m.get_role_display(), **got})
    totals = {k: sum(d[k] for d in days) for k in dashboard.SUMS}
    return {"days": days, "totals": totals, "models": models, "members": members}
