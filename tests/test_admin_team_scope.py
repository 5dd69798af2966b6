"""A staff member who leads teams (and is not a superuser) sees, in the admin and the usage dashboard,
only those teams' request-log rows, keys and teams, whatever permissions the admin gave them."""

import csv
import io
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from identity.models import Membership
from proxy.models import ApiKey, RequestLog, Team
from tests.conftest import make_key

VIEW = ("view_requestlog", "view_apikey", "change_apikey", "view_team")


@pytest.fixture
def two_teams(transactional_db):
    ours = Team.objects.create(name="ours-team", daily_budget=Decimal("5"))
    theirs = Team.objects.create(name="theirs-team", daily_budget=Decimal("7"))
    our_key, _ = make_key("ours-key", username="olga", team=ours, monthly_budget=Decimal("3"))
    their_key, _ = make_key("theirs-key", username="theo", team=theirs, monthly_budget=Decimal("4"))
    rows = {}
    for key, team in ((our_key, ours), (their_key, theirs)):
        rows[team.name] = RequestLog.objects.create(
            api_key=key,
            team=team,
            upstream_model=f"{team.name}-model",
            session_id=f"{team.name}-session",
            cost=Decimal("1"),
            input_tokens=10,
        )
    return ours, theirs, our_key, their_key, rows


def staff(client, *, lead_of: list[Team], superuser: bool = False):
    user = get_user_model().objects.create_user("lead", is_staff=True, is_superuser=superuser)
    user.user_permissions.add(*Permission.objects.filter(codename__in=VIEW))
    for team in lead_of:
        Membership.objects.create(user=user, team=team, role="lead")
    client.force_login(user)
    return user


def page(client, url: str, **params) -> str:
    response = client.get(url, params)
    assert response.status_code == 200, response.status_code
    if response.streaming:
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


PAGES = [
    ("admin:proxy_requestlog_changelist", {}),
    ("admin:proxy_apikey_changelist", {}),
    ("admin:proxy_team_changelist", {}),
    ("admin:proxy_usage_changelist", {}),
    ("admin:proxy_usage_changelist", {"export": "rows"}),
    ("admin:proxy_usage_changelist", {"export": "aggregates"}),
    ("admin:proxy_usage_changelist", {"export": "chargeback", "period": "day"}),
    ("admin:proxy_usage_changelist", {"export": "chargeback", "period": "month"}),
    ("admin:proxy_requestlog_sessions", {}),
]


@pytest.mark.parametrize(("name", "params"), PAGES)
def test_a_lead_sees_only_their_teams(client, two_teams, name, params):
    staff(client, lead_of=[two_teams[0]])
    text = page(client, reverse(name), **params)
    assert "ours-" in text
    assert "theirs-" not in text, "another team's rows, keys or names are shown"


@pytest.mark.parametrize(("name", "params"), PAGES)
def test_staff_who_lead_no_team_and_superusers_still_see_everything(client, two_teams, name, params):
    staff(client, lead_of=[] if "requestlog" in name else [two_teams[0]], superuser="requestlog" not in name)
    text = page(client, reverse(name), **params)
    assert "ours-" in text and "theirs-" in text


def test_a_lead_cannot_open_or_filter_for_another_teams_objects(client, two_teams):
    ours, theirs, our_key, their_key, rows = two_teams
    staff(client, lead_of=[ours])
    for name, obj in (
        ("admin:proxy_requestlog_change", rows["theirs-team"]),
        ("admin:proxy_apikey_change", their_key),
        ("admin:proxy_team_change", theirs),
    ):
        response = client.get(reverse(name, args=[obj.pk]))
        assert response.status_code in (302, 404), name
        assert "theirs-" not in response.content.decode()
    assert (
        client.get(reverse("admin:proxy_requestlog_change", args=[rows["ours-team"].pk])).status_code == 200
    )
    dashboard = reverse("admin:proxy_usage_changelist")
    for params in ({"key": their_key.pk}, {"team": theirs.pk}):
        usage = client.get(dashboard, params).context["usage"]
        assert usage.totals["turns"] == 0 and usage.totals["cost"] == 0
        exported = page(client, dashboard, export="rows", **params)
        assert len(list(csv.reader(io.StringIO(exported)))) == 1  # the header alone
    form = page(client, reverse("admin:proxy_apikey_change", args=[our_key.pk]))
    assert "theirs-team" not in form and "theo" not in form, "the key's team and owner choices leak"
    assert ApiKey.objects.get(pk=their_key.pk).name == "theirs-key"
