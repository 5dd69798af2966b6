"""Codex sessions in the admin: turns grouped by their session (Codex's ``session-id``, or a request's
``prompt_cache_key``), with when each began and last ran, its turns, tokens, cost and transports."""

import datetime as dt
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _

from proxy.admin import dashboard
from proxy.models import ApiKey, RequestLog

SESSIONS_SHOWN = 200


def sessions(rows: Any, days: int) -> list[dict[str, Any]]:
    """The latest sessions of ``rows`` (a request-log queryset) in the last ``days`` days, with their key's
    name."""
    now = timezone.now()
    found = dashboard.sessions(
        lambda start, end: rows.filter(created_at__gte=start, created_at__lt=end),
        now - dt.timedelta(days=days),
        now + dt.timedelta(days=1),  # and rows stamped by a clock ahead of ours
        SESSIONS_SHOWN,
    )
    names = dict(ApiKey.objects.filter(pk__in={r["key"] for r in found}).values_list("pk", "name"))
    labels = {"websocket": _("WebSocket"), "http": _("HTTP"), "both": _("both")}
    for r in found:
        r["key_name"] = names.get(r["key"], "—")
        r["transport"] = labels[r["transport"]]
    return found


def sessions_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """The sessions page, scoped as the request log is (a lead sees their teams' sessions)."""
    try:
        days = min(max(int(request.GET.get("days", "7")), 1), 90)
    except ValueError:
        days = 7
    rows = model_admin.get_queryset(request)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": RequestLog._meta,
        "title": _("Sessions"),
        "sessions": sessions(rows, days),
        "days": days,
        "shown": SESSIONS_SHOWN,
    }
    return TemplateResponse(request, "admin/proxy/requestlog/sessions.html", context)
