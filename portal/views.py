"""The portal's pages: my teams, my usage (with CSV), a lead's view of their team, sign-in."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.translation import gettext as _

from portal import policy, queries
from proxy.admin import dashboard
from proxy.admin.charts import bar_chart
from proxy.models import ApiKey, Team
from proxy.templatetags.sluice_money import money

LOGIN_URL = reverse_lazy("portal:login")
signed_in = login_required(login_url=LOGIN_URL)


def oidc_link(next_url: str) -> str:
    """The identity provider's sign-in, when one is configured."""
    if not getattr(settings, "SLUICE_OIDC_ISSUER", ""):
        return ""
    return "/auth/oidc/login/?" + urlencode({"next": next_url})


class LoginView(auth_views.LoginView):
    template_name = "portal/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self) -> str:
        return reverse("portal:teams")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["oidc_url"] = oidc_link(self.get_redirect_url() or reverse("portal:teams"))
        return context


@signed_in
def teams(request: HttpRequest) -> HttpResponse:
    rows = []
    own = queries.own_cells(request.user, queries.this_month())
    for membership in queries.memberships(request.user):
        team = membership.team
        day, month = queries.spend(own.filter(team_id=team.pk))
        rows.append(
            {
                "membership": membership,
                "team": team,
                "budget": queries.budget_left(f"t{team.pk}", team),
                "own_day": day,
                "own_month": month,
                "keys_held": queries.keys_held(request.user, team),
                "max_days": policy.max_days(team),
            }
        )
    return render(request, "portal/teams.html", {"rows": rows, "section": "teams"})


def _charts(days: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    labels = [d["day"].strftime("%m-%d") for d in days]
    count = lambda v: f"{v:,.0f}"  # noqa: E731
    return [
        (
            _("Spend per day (USD)"),
            bar_chart(
                labels, [(_("spend"), [float(d["cost"]) for d in days])], money, _("Spend per day (USD)")
            ),
        ),
        (
            _("Tokens per day"),
            bar_chart(
                labels,
                [
                    (_("input"), [d["input"] for d in days]),
                    (_("output"), [d["output"] for d in days]),
                ],
                count,
                _("Tokens per day"),
            ),
        ),
    ]


@signed_in
def usage(request: HttpRequest) -> HttpResponse:
    f = queries.last_days()
    got = queries.usage(queries.own_cells(request.user, f), f, ApiKey.objects.filter(owner=request.user))
    context = {
        **got,
        "charts": _charts(got["days"]),
        "sessions": queries.sessions(request.user, f),
        "filters": f,
        "section": "usage",
    }
    return render(request, "portal/usage.html", context)


CSV_COLUMNS = (
    "created_at",
    "api_key_id",
    "endpoint",
    "requested_model",
    "upstream_model",
    "status",
    "error_code",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost",
    "client_transport",
    "upstream_transport",
    "session_id",
    "response_id",
)


COST = CSV_COLUMNS.index("cost")


class _Echo:
    def write(self, value: str) -> str:
        return value


@signed_in
def usage_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The person's own rows of the last 30 days (``?days=`` up to a year)."""
    days = request.GET.get("days", "")
    f = queries.last_days(min(int(days), 366) if days.isdigit() and int(days) > 0 else queries.DAYS)
    rows = queries.own_rows(request.user, f).order_by("created_at")

    # Only the person's keys are named: a row of a key handed to someone else since shows no name.
    names = dict(ApiKey.objects.filter(owner=request.user).values_list("pk", "name"))

    def lines() -> Iterator[str]:
        writer = csv.writer(_Echo())
        yield writer.writerow(["created_at", "key", *CSV_COLUMNS[2:]])
        for values in rows.values_list(*CSV_COLUMNS).iterator(2000):
            cells = [dashboard.neutral(v) for v in values]
            cells[1] = dashboard.neutral(names.get(values[1], ""))
            cells[COST] = "" if values[COST] is None else dashboard.usd(values[COST])
            yield writer.writerow(cells)

    response = StreamingHttpResponse(lines(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="sluice-my-requests-{f.start}-{f.end}.csv"'
    return response


def led_team(request: HttpRequest, team_id: int) -> Team:
    """A team the signed-in person leads; anything else is not found."""
    if team_id not in queries.led_team_ids(request.user):
        raise Http404
    return Team.objects.get(pk=team_id)


@signed_in
def team(request: HttpRequest, team_id: int) -> HttpResponse:
    found = led_team(request, team_id)
    f = queries.last_days()
    got = queries.team_usage(found, f)
    now = timezone.now()
    keys = (
        ApiKey.objects.filter(team=found)
        .select_related("owner")
        .order_by("owner__username", "-created_at")
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now - dt.timedelta(days=30)))
    )
    context = {
        "team": found,
        "members": got["members"],
        "keys": keys,
        "charts": _charts(got["days"]),
        "models": got["models"],
        "totals": got["totals"],
        "section": f"team-{found.pk}",
        "now": now,
    }
    return render(request, "portal/team.html", context)
