"""A key's page and the key list say what limits the key: its own limits and its team's, the tighter one
marked, what is spent and left, and when each resets."""

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from proxy.models import RequestLog, Team
from tests.conftest import make_key

pytestmark = pytest.mark.django_db


def effective(page: str) -> dict[str, list[str]]:
    """The effective-limits table: each row's cells by its label, tags stripped."""
    table = page.split('class="sluice-effective"', 1)[1].split("</table>", 1)[0]
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]:
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        out[cells[0]] = cells[1:]
    return out


@pytest.fixture
def limited():
    team = Team.objects.create(
        name="research", rpm=60, daily_budget=Decimal("10"), allowed_models=["gpt-5.5"]
    )
    key, _ = make_key("analysis", team=team, rpm=100, monthly_budget=Decimal("3"))
    RequestLog.objects.create(api_key=key, team=team, owner=key.owner, cost=Decimal("1.5"))
    RequestLog.objects.create(
        api_key=key, team=team, owner=key.owner, cost=Decimal("7"), endpoint="provider_test"
    )
    return key


def test_the_key_page_shows_key_and_team_limits_the_tighter_marked_spend_left_and_reset(
    admin_client, limited
):
    page = admin_client.get(reverse("admin:proxy_apikey_change", args=[limited.pk])).content.decode()
    rows = effective(page)
    # key, team, applies, used, left, resets
    assert rows["requests per minute"][:3] == ["100", "60", "60 (team)"]
    assert rows["daily budget (USD)"][:5] == ["—", "$10.00", "$10.00 (team)", "$1.50", "$8.50"]
    assert rows["monthly budget (USD)"][:5] == ["$3.00", "—", "$3.00 (key)", "$1.50", "$1.50"]
    assert "UTC" in rows["daily budget (USD)"][5] and rows["turns in flight"][2] == "—"
    # The model list's help names the team's models rather than "every model".
    assert "the models its team allows (gpt-5.5)" in page and "Empty: every model" not in page


def test_the_team_page_shows_its_limits_and_spend(admin_client, limited):
    page = admin_client.get(reverse("admin:proxy_team_change", args=[limited.team.pk])).content.decode()
    rows = effective(page)
    assert rows["daily budget (USD)"][:4] == ["$10.00", "$10.00", "$1.50", "$8.50"]


def test_the_key_list_shows_spend_against_the_budget_that_applies(admin_client, limited):
    page = admin_client.get(reverse("admin:proxy_apikey_changelist")).content.decode()
    assert "$1.50 of $10.00 (team)" in page and "$1.50 of $3.00 (key)" in page


def test_a_key_of_a_disabled_team_is_not_shown_serving(admin_client, limited):
    team = limited.team
    team.enabled = False
    team.save()
    page = admin_client.get(reverse("admin:proxy_apikey_changelist")).content.decode()
    row = page.split('id="result_list"', 1)[1]
    assert "icon-no.svg" in row and "icon-yes.svg" not in row


def test_the_team_page_title_reads_well_in_russian(admin_client, limited):
    admin_client.cookies["django_language"] = "ru"
    page = admin_client.get(reverse("admin:proxy_team_change", args=[limited.team.pk])).content.decode()
    assert "Изменить команду" in page and "Изменить команда" not in page


@pytest.mark.parametrize("language", ["en", "ja", "ru", "zh-hans"])
def test_dates_have_one_format_in_every_language(admin_client, limited, language):
    admin_client.cookies["django_language"] = language
    row = RequestLog.objects.filter(api_key=limited).first()
    stamp = row.created_at.strftime("%Y-%m-%d %H:%M")
    listed = admin_client.get(reverse("admin:proxy_requestlog_changelist")).content.decode()
    detail = admin_client.get(reverse("admin:proxy_apikey_change", args=[limited.pk])).content.decode()
    assert stamp in listed and limited.created_at.strftime("%Y-%m-%d %H:%M") in detail
