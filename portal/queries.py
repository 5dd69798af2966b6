"""Every portal query starts here, filtered by the signed-in person (or, for a lead, the teams they lead).

A request-log row is a person's when its ``owner`` is them, or, for rows written before owners were
recorded, when its key is theirs. The aggregates are the usage dashboard's own (``proxy.dashboard``),
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
from proxy import dashboard, limits
from proxy.models import ApiKey, RequestLog, Team

DAYS = 30
SESSIONS_SHOWN = 50


def memberships(user: Any) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("team").order_by("team__name")


def led_team_ids(user: Any) -> list[int]:
    return list(Membership.objects.filter(user=user, role=Role.LEAD).values_list("team_id", flat=True))


def own_keys(user: Any) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(owner=user).select_related("team").order_by("-created_at")


def own_rows(user: Any) -> QuerySet[RequestLog]:
    """The person's request-log rows: owned, or (owner not recorded) made with one of their keys."""
    key_ids = list(ApiKey.objects.filter(owner=user).values_list("pk", flat=True))
    return RequestLog.objects.filter(Q(owner=user) | Q(owner__isnull=True, api_key_id__in=key_ids)).order_by()


def last_days(days: int = DAYS) -> dashboard.Filters:
    today = timezone.now().astimezone(dt.UTC).date()
    return dashboard.Filters(start=today - dt.timedelta(days=days - 1), end=today)


def in_range(qs: QuerySet[RequestLog], f: dashboard.Filters) -> QuerySet[RequestLog]:
    start = dt.datetime.combine(f.start, dt.time.min, dt.UTC)
    end = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time.min, dt.UTC)
    return qs.filter(created_at__gte=start, created_at__lt=end)


def usage(rows: QuerySet[RequestLog], f: dashboard.Filters, keys: QuerySet[ApiKey]) -> dict[str, Any]:
    """Per day, per model and per key over ``rows`` in the range; only ``keys`` are named (a row of a key
    handed to someone else since is the person's, the key's name is not)."""
    qs = in_range(rows, f)
    days, _transports = dashboard.daily(qs, f)
    totals = {k: sum(d[k] for d in days) for k in dashboard.SUMS}
    ranked = dashboard.tops(qs, ["api_key_id", "upstream_model"], named_only=("upstream_model",))
    names = dict(keys.filter(pk__in=[r["id"] for r in ranked["api_key_id"]]).values_list("pk", "name"))
    for r in ranked["api_key_id"]:
        r["name"] = names.get(r["id"], "—")
    return {"days": days, "totals": totals, "keys": ranked["api_key_id"], "models": ranked["upstream_model"]}


def sessions(rows: QuerySet[RequestLog], f: dashboard.Filters) -> list[dict[str, Any]]:
    """Turns grouped by session (Codex's session header or ``prompt_cache_key``), latest first."""
    out = list(
        in_range(rows, f)
        .exclude(session_id="")
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


def spend(rows: QuerySet[RequestLog]) -> tuple[Decimal, Decimal]:
    """Spend of ``rows`` this UTC day and this calendar month."""
    now = timezone.now().astimezone(dt.UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    got = rows.filter(created_at__gte=month).aggregate(
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


def team_members_usage(team: Team, f: dashboard.Filters) -> list[dict[str, Any]]:
    """For a lead: each member's spend and turns in the team over the range, keys' owners resolving rows
    whose owner was not recorded."""
    key_owner = dict(ApiKey.objects.filter(team=team).values_list("pk", "owner_id"))
    per: dict[int | None, dict[str, Any]] = {}
    for r in (
        in_range(RequestLog.objects.filter(team=team), f)
        .order_by()
        .values("owner_id", "api_key_id")
        .annotate(cost=Coalesce(Sum("cost"), Decimal(0)), turns=Count("pk"))
    ):
        who = r["owner_id"] or key_owner.get(r["api_key_id"])
        entry = per.setdefault(who, {"cost": Decimal(0), "turns": 0})
        entry["cost"] += r["cost"]
        entry["turns"] += r["turns"]
    members = []
    for m in Membership.objects.filter(team=team).select_related("user").order_by("user__username"):
        got = per.get(m.user_id, {"cost": Decimal(0), "turns": 0})
        members.append({"user": m.user, "role": m.get_role_display(), **got})
    return members
