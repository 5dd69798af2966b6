"""What is worth an alert, and when: receivers of the gateway's signals (they only queue work for the
alert worker) and the checks the worker runs."""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from audit import alerts
from audit.alerts import Alert
from audit.chain import record
from audit.context import SYSTEM, acting
from audit.models import Action, TeamAlertPolicy, default_thresholds
from providers.models import Provider
from proxy.models import ApiKey, RequestLog, Team
from proxy.usage import metrics, signals  # the gateway's signals: proxy never imports the audit app

NODE = f"{socket.gethostname()}:{os.getpid()}"


def _periods(now: dt.datetime) -> dict[str, tuple[dt.datetime, str]]:
    day = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"daily": (day, f"{day:%Y-%m-%d}"), "monthly": (day.replace(day=1), f"{day:%Y-%m}")}


def _thresholds(team_id: int | None) -> list[int]:
    policy = TeamAlertPolicy.objects.filter(team_id=team_id).first() if team_id else None
    values = policy.thresholds if policy is not None else default_thresholds()
    return sorted({int(v) for v in values if isinstance(v, int | float) and 0 < v <= 1000})


def check_budget(subject: ApiKey | Team, now: dt.datetime | None = None) -> None:
    """Claim every threshold the subject's spend has crossed this day and month; alert once for the
    highest newly claimed."""
    is_key = isinstance(subject, ApiKey)
    team_id = subject.team_id if is_key else subject.pk
    rows = RequestLog.objects.filter(**({"api_key_id": subject.pk} if is_key else {"team_id": subject.pk}))
    name = f"key:{subject.pk}" if is_key else f"team:{subject.pk}"
    for kind, (start, period) in _periods(now or timezone.now()).items():
        budget = subject.daily_budget if kind == "daily" else subject.monthly_budget
        if not budget:
            continue
        spent = rows.filter(created_at__gte=start).aggregate(s=Sum("cost"))["s"] or Decimal(0)
        crossed = [t for t in _thresholds(team_id) if spent * 100 >= budget * t]
        claimed = [t for t in crossed if alerts.claim(name, f"{kind}:{t}", period)]
        if claimed:
            alerts.handle(_budget_alert(subject, is_key, kind, max(claimed), spent, budget, team_id))


def _budget_alert(
    subject: ApiKey | Team,
    is_key: bool,
    kind: str,
    threshold: int,
    spent: Decimal,
    budget: Decimal,
    team: object,
) -> Alert:
    what = _("API key “%(name)s”") if is_key else _("team “%(name)s”")
    budget_name = _("daily budget") if kind == "daily" else _("monthly budget")
    values = {
        "who": what % {"name": subject.name},
        "budget": budget_name,
        "threshold": threshold,
        "spent": f"{spent:.2f}",
        "limit": f"{budget:.2f}",
    }
    title = _("Sluice: %(who)s reached %(threshold)d%% of its %(budget)s") % values
    body = _("%(who)s has spent %(spent)s USD of its %(budget)s of %(limit)s USD.") % values
    return Alert("budget", title, body, team_id=team)


def spend_check(key_ids: Iterable[int], team_ids: Iterable[int]) -> None:
    if not alerts.configured():
        return
    for key in ApiKey.objects.filter(pk__in=set(key_ids)).exclude(daily_budget=None, monthly_budget=None):
        check_budget(key)
    for team in Team.objects.filter(pk__in=set(team_ids)).exclude(daily_budget=None, monthly_budget=None):
        check_budget(team)


def turn_recorded(records: list[Any], costs: list[Decimal], **kwargs: Any) -> None:
    """From the log writer's thread: hand the spending keys and teams to the alert worker, nothing more."""
    keys = {r.key_id for r, c in zip(records, costs, strict=False) if c and r.key_id is not None}
    teams = {r.team_id for r, c in zip(records, costs, strict=False) if c and r.team_id is not None}
    if keys or teams:
        alerts.submit(lambda: spend_check(keys, teams))


def _provider_name(provider_id: int) -> str:
    provider = Provider.objects.filter(pk=provider_id).first()
    return provider.name if provider is not None else str(provider_id)


def _window() -> str:
    """Nodes that see the same breaker change within one cooldown agree on the period."""
    return str(int(time.time() // max(settings.SLUICE_BREAKER_COOLDOWN, 1)))


def breaker_changed(provider_id: int, opened: bool, **kwargs: Any) -> None:
    window = _window()

    def job() -> None:
        values = {"name": _provider_name(provider_id)}
        if opened:
            title = _("Sluice: provider “%(name)s” is failing; its circuit breaker opened") % values
            body = _("Turns go to other providers until the breaker's cooldown ends.")
        else:
            title = _("Sluice: provider “%(name)s” answers again; its circuit breaker closed") % values
            body = _("The provider serves turns again.")
        event = "breaker-open" if opened else "breaker-closed"
        alerts.handle(Alert(event, title, body, once=(f"provider:{provider_id}", event, window)))

    alerts.submit(job)


def websocket_refused(provider_id: int, **kwargs: Any) -> None:
    day = f"{timezone.now():%Y-%m-%d}"

    def job() -> None:
        values = {"name": _provider_name(provider_id)}
        title = _("Sluice: provider “%(name)s” refuses WebSockets") % values
        body = _("Turns to it go over HTTP; check its WebSocket mode in the admin.")
        alerts.handle(Alert("websocket-refused", title, body, once=(f"provider:{provider_id}", "ws", day)))

    alerts.submit(job)


def readiness_lost(down: dict[str, str], **kwargs: Any) -> None:
    if set(down) <= {"lifecycle"}:  # draining for a shutdown is planned, not an outage
        return
    hour = f"{timezone.now():%Y-%m-%dT%H}"
    what = ", ".join(f"{k}: {v}" for k, v in sorted(down.items()))
    title = _("Sluice: node %(node)s is not ready") % {"node": NODE}
    alerts.send(Alert("not-ready", title, what[:1000], once=(f"node:{NODE}"[:100], "not-ready", hour)))


_dropped_seen = 0.0
_expiry_checked = 0.0


def dropped_rows() -> None:
    """Periodic, in the worker: the request log's dropped-row counter of this process went up (rows
    that could not be written, and refusals without a key past their allowance)."""
    global _dropped_seen
    samples = [s for m in metrics.log_dropped.collect() for s in m.samples]
    total = sum(s.value for s in samples if s.name.endswith("_total"))
    if total <= _dropped_seen:
        return
    count, _dropped_seen = int(total - _dropped_seen), total
    if alerts.configured():
        hour = f"{timezone.now():%Y-%m-%dT%H}"
        title = _("Sluice: node %(node)s dropped request-log rows") % {"node": NODE}
        body = _("%(count)d rows could not be written; see the node's log.") % {"count": count}
        alerts.handle(Alert("log-dropped", title, body, once=(f"node:{NODE}"[:100], "log-dropped", hour)))


def _owner_and_leads(key: ApiKey) -> tuple[str, ...]:
    """E-mail addresses of the key's owner and its team's leads, where known."""
    emails = [key.owner.email]
    if key.team_id is not None:
        membership = apps.get_model("identity", "Membership")  # by name: the identity app is optional here
        leads = membership.objects.filter(team_id=key.team_id, role="lead").select_related("user")
        emails += [m.user.email for m in leads]
    return tuple(sorted({e for e in emails if e}))


def expiring_keys(now: dt.datetime | None = None) -> tuple[int, int]:
    """Alert once per key expiring within 7 days; record keys whose expiry passed as expired (by the
    system). Returns (alerts, expiries)."""
    now = now or timezone.now()
    soon = ApiKey.objects.filter(enabled=True, expires_at__gt=now, expires_at__lte=now + dt.timedelta(days=7))
    sent = 0
    for key in soon.select_related("owner") if alerts.configured() else ():
        if alerts.claim(f"key:{key.pk}", "expiring", f"{key.expires_at:%Y-%m-%dT%H:%M}"):
            people = _owner_and_leads(key)
            when = f"{key.expires_at:%Y-%m-%d %H:%M} UTC"
            values = {"name": key.name, "owner": key.owner.get_username(), "when": when}
            title = _("Sluice: API key “%(name)s” of %(owner)s expires on %(when)s") % values
            body = _("Make a new key before then; turns with this key are refused once it expires.")
            alerts.handle(Alert("key-expiring", title, body, team_id=key.team_id, recipients=people))
            sent += 1
    expired = 0
    with acting(SYSTEM):
        for key in ApiKey.objects.filter(enabled=True, expires_at__lte=now):
            if alerts.claim(f"key:{key.pk}", "expired", f"{key.expires_at:%Y-%m-%dT%H:%M}"):
                record(Action.EXPIRE, object_type="proxy.ApiKey", object_id=key.pk, object_label=str(key))
                expired += 1
    return sent, expired


def expiry_timer() -> None:
    """Periodic, in the worker: the expiry check about once an hour (every node runs it; the claims
    make each alert and each expiry row once)."""
    global _expiry_checked
    if time.monotonic() - _expiry_checked >= settings.SLUICE_ALERT_EXPIRY_CHECK_SECONDS:
        _expiry_checked = time.monotonic()
        expiring_keys()


def connect() -> None:
    signals.turn_recorded.connect(turn_recorded, weak=False, dispatch_uid="audit:turn-recorded")
    signals.breaker_changed.connect(breaker_changed, weak=False, dispatch_uid="audit:breaker")
    signals.upstream_websocket_refused.connect(websocket_refused, weak=False, dispatch_uid="audit:ws")
    signals.readiness_lost.connect(readiness_lost, weak=False, dispatch_uid="audit:ready")
    alerts.every_period(dropped_rows)
    alerts.every_period(expiry_timer)
