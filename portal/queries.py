"""Every portal query starts here, filtered by the signed-in person (or, for a lead, the teams they lead).

A request-log row is a person's when its ``owner`` is them, or, for rows written before owners were
recorded, when its key is theirs. The aggregates are the usage dashboard's own (``proxy.admin.dashboard``),
run over those rows only.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from identity.models import Membership, Role
from proxy.admin import dashboard
from proxy.governance import limits
from proxy.models import ApiKey, RequestLog, Team, UsageDay

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
    keys."""
    start = dt.datetime.combine(f.start, dt.time.min, dt.UTC)
    return own_rows_between(
        user, start, dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time.min, dt.UTC)
    )


def own_rows_between(user: Any, start: dt.datetime, end: dt.datetime) -> QuerySet[RequestLog]:
    """The person's request-log rows from ``start`` to ``end``. The range is repeated in each branch of
    the OR so that each reads an index of its own instead of every row of the range through the table."""
    key_ids = list(ApiKey.objects.filter(owner=user).values_list("pk", flat=True))
    when = Q(created_at__gte=start, created_at__lt=end)
    # "owner is NULL or this person" (the same rows as "owner is NULL" once the first branch is there):
    # an OR no index serves, so that the second branch reads the key index, never every ownerless row.
    by_key = Q(api_key_id__in=key_ids) & (Q(owner__isnull=True) | Q(owner=user)) & when
    return RequestLog.objects.filter((Q(owner=user) & when) | by_key).order_by()


def own_cells(user: Any, f: dashboard.Filters) -> QuerySet[UsageDay]:
    """The person's daily roll-up cells of the range (proxy/usage/rollup.py): the same rows as
    ``own_rows``."""
    key_ids = list(ApiKey.objects.filter(owner=user).values_list("pk", flat=True))
    mine = Q(owner_id=user.pk) | Q(owner_id=0, api_key_id__in=key_ids)
    return UsageDay.objects.filter(mine, day__gte=f.start, day__lte=f.end).order_by()


def last_days(days: int = DAYS) -> dashboard.Filters:
    today = timezone.now().astimezone(dt.UTC).date()
    return dashboard.Filters(start=today - dt.timedelta(days=days - 1), end=today)


def usage(cells: QuerySet[UsageDay], f: dashboard.Filters, keys: QuerySet[ApiKey]) -> dict[str, Any]:
    """Per day, per model and per key over ``cells`` (``own_cells``); only ``keys`` are named (a row of a
    key handed to someone else since is the person's, the key's name is not)."""
    days, _transports = dashboard.daily(cells, f)
    totals = {k: sum(d[k] for d in days) for k in dashboard.SUMS}
    ranked = dashboard.tops(cells, ["upstream_model", "api_key_id"], named_only=("upstream_model",))
    names = dict(keys.filter(pk__in=[r["id"] for r in ranked["api_key_id"]]).values_list("pk", "name"))
    for r in ranked["api_key_id"]:
        r["name"] = names.get(r["id"], "—")
    return {"days": days, "totals": totals, "keys": ranked["api_key_id"], "models": ranked["upstream_model"]}


def sessions(user: Any, f: dashboard.Filters) -> list[dict[str, Any]]:
    """The person's latest Codex sessions of the range (the admin's own query)."""
    start = dt.datetime.combine(f.start, dt.time.min, dt.UTC)
    end = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time.min, dt.UTC)
    return dashboard.sessions(lambda s, e: own_rows_between(user, s, e), start, end, SESSIONS_SHOWN)


def this_month() -> dashboard.Filters:
    today = timezone.now().astimezone(dt.UTC).date()
    return dashboard.Filters(start=today.replace(day=1), end=today)


def spend(cells: QuerySet[UsageDay]) -> tuple[Decimal, Decimal]:
    """Spend of ``cells`` (of this month) this UTC day and this calendar month."""
    day = timezone.now().astimezone(dt.UTC).date()
    got = cells.aggregate(
        month=Coalesce(Sum("cost"), Decimal(0)),
        day=Coalesce(Sum("cost", filter=Q(day=day)), Decimal(0)),
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
    grouping of the team's daily roll-up cells; rows whose owner was not recorded count for their key's
    owner."""
    key_owner = dict(ApiKey.objects.filter(team=team).values_list("pk", "owner_id"))
    empty = {k: 0 for k in dashboard.SUMS}
    by_day: dict[str, dict[str, Any]] = {}
    by_model: dict[str, list] = {}
    by_person: dict[int | None, dict[str, Any]] = {}
    cells = (
        UsageDay.objects.filter(team_id=team.pk, day__gte=f.start, day__lte=f.end)
        .order_by()
        .values("upstream_model", "owner_id", "api_key_id", "day")
        .annotate(**dashboard.ROLLED)
    )
    for r in cells:
        day = by_day.setdefault(str(r["day"]), dict(empty))
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
