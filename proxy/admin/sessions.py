"""Codex sessions in the admin: turns grouped by their session (Codex's ``session-id``, or a request's
``prompt_cache_key``), with when each began and last ran, its turns, tokens, cost and transports."""

import datetime as dt
from typing import Any

from django.db.models import Count, Max, Min, Q, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _

from proxy.models import ApiKey, RequestLog

SESSIONS_SHOWN = 200


def sessions(rows: Any, days: int) -> list[dict[str, Any]]:
    """The latest sessions of ``rows`` (a request-log queryset) in the last ``days`` days."""
    since = timezone.now() - dt.timedelta(days=days)
    grouped = (
        rows.filter(created_at__gte=since)
        .exclude(session_id="")
        .exclude(endpoint="provider_test")
        .values("session_id")
        .annotate(
            first=Min("created_at"),
            last=Max("created_at"),
            turns=Count("pk"),
            input=Coalesce(Sum("input_tokens"), 0),
            output=Coalesce(Sum("output_tokens"), 0),
            cost=Sum("cost"),
            websocket=Count("pk", filter=Q(client_transport="websocket")),
            refused=Count("pk", filter=Q(status__gte=400)),
            key=Max("api_key_id"),
        )
        .order_by("-last")[:SESSIONS_SHOWN]
    )
    found = list(grouped)
    names = dict(ApiKey.objects.filter(pk__in={r["key"] for r in found}).values_list("pk", "name"))
    for r in found:
        r["key_name"] = names.get(r["key"], "—")
        r["transport"] = (
            _("WebSocket") if r["websocket"] == r["turns"] else _("HTTP") if not r["websocket"] else _("both")
        )
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
