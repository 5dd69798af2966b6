"""The dashboard's budget panel (daily and monthly, within the filters), its links to filtered views and
rows, its digit grouping, and provider tests kept out of spend."""

import html
import re
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from proxy.models import RequestLog, Team
from tests.conftest import make_key, make_provider

pytestmark = pytest.mark.django_db
URL = "/admin/proxy/usage/"


def budget_rows(page: str) -> dict[str, list[str]]:
    table = page.split('id="sluice-budgets"', 1)[1].split("</table>", 1)[0]
    out = {}
    for row in re.findall(r"<tr data-holder[^>]*>(.*?)</tr>", table, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        out[html.unescape(cells[0])] = cells[1:7]
    return out


@pytest.fixture
def spent():
    team = Team.objects.create(name="research", daily_budget=Decimal("10"))
    key, _ = make_key("analysis", team=team, monthly_budget=Decimal("50"))
    other, _ = make_key("other", username="bob", daily_budget=Decimal("2"))
    now = timezone.now()
    RequestLog.objects.create(
        created_at=now, api_key=key, team=team, cost=Decimal("4"), input_tokens=1_234_567
    )
    RequestLog.objects.create(created_at=now, api_key=other, cost=Decimal("0.5"))
    # A provider test: recorded, not spend.
    RequestLog.objects.create(
        created_at=now, api_key=key, team=team, cost=Decimal("9"), endpoint="provider_test"
    )
    return team, key, other


def test_the_budget_panel_shows_daily_and_monthly_budgets_with_spend_and_what_is_left(admin_client, spent):
    rows = budget_rows(admin_client.get(URL).content.decode())
    # today: spent, budget, left; this month: spent, budget, left
    assert rows["team: research"] == ["$4.00", "$10.00", "$6.00", "$4.00", "—", "—"]
    assert rows["API key: analysis"] == ["$4.00", "—", "—", "$4.00", "$50.00", "$46.00"]
    assert rows["API key: other"][:3] == ["$0.50", "$2.00", "$1.50"]


def test_the_budget_panel_follows_the_filters(admin_client, spent):
    team, key, other = spent
    by_team = budget_rows(admin_client.get(URL, {"team": team.pk}).content.decode())
    assert set(by_team) == {"team: research", "API key: analysis"}
    by_key = budget_rows(admin_client.get(URL, {"key": other.pk}).content.decode())
    assert set(by_key) == {"API key: other"}


def test_provider_tests_are_outside_the_totals(admin_client, spent):
    page = admin_client.get(URL).content.decode()
    assert re.search(r'id="sluice-total-cost">\$4\.50<', page)


def test_totals_are_grouped_and_tops_link_to_their_filtered_view_and_rows(admin_client, spent):
    team, key, other = spent
    provider = make_provider(None, name="north")
    RequestLog.objects.filter(api_key=key).update(provider=provider, upstream_model="gpt-5.5")
    call_command("rollup", "--days", "2")  # rows changed in bulk: the hourly roll-up is recomputed
    page = admin_client.get(URL).content.decode()
    assert "1,234,567" in page
    assert f"key={key.pk}" in page and f"team={team.pk}" in page
    assert f"provider={provider.pk}" in page and "model=gpt-5.5" in page
    rows = re.search(rf'href="(/admin/proxy/requestlog/\?[^"]*api_key__id__exact={key.pk}[^"]*)"', page)
    assert rows, "a top key links to its rows"
    listed = admin_client.get(html.unescape(rows.group(1)))
    assert listed.status_code == 200 and "analysis" in listed.content.decode()
    table = listed.content.decode().split('id="result_list"', 1)[1].split("</table>", 1)[0]
    assert "analysis" in table and "other" not in table


def exported(client, **params) -> list[list[str]]:
    import csv

    response = client.get(URL, params)
    assert response.status_code == 200
    return list(csv.reader(b"".join(response.streaming_content).decode().splitlines()))


def test_exports_carry_names_and_every_key_per_day_or_month(admin_client, spent):
    team, key, other = spent
    provider = make_provider(None, name="north")
    now = timezone.now()
    for i in range(12):  # more keys than the dashboard's top ten
        extra, _ = make_key(f"extra-{i}", username="carol")
        RequestLog.objects.create(created_at=now, api_key=extra, owner=extra.owner, provider=provider, cost=1)
    RequestLog.objects.filter(api_key=key).update(
        owner=key.owner, provider=provider, upstream_model="gpt-5.5"
    )
    rows = exported(admin_client, export="rows")
    header = rows[0]
    named = [dict(zip(header, r, strict=True)) for r in rows[1:]]
    mine = next(r for r in named if r["key_name"] == "analysis")
    assert (mine["owner_name"], mine["team_name"], mine["provider_name"]) == ("alice", "research", "north")
    for period, width in (("day", 10), ("month", 7)):
        rows = exported(admin_client, export="chargeback", period=period)
        keys = {r[1] for r in rows[1:]}
        assert {"analysis", "other", *(f"extra-{i}" for i in range(12))} <= keys
        line = next(r for r in rows[1:] if r[1] == "analysis")
        assert len(line[0]) == width and line[2:6] == ["alice", "research", "north", "gpt-5.5"]
        assert line[-1] == "4"  # the provider test's 9 USD is not spend


def test_the_dashboard_shows_spend_per_person_linked_to_their_rows(admin_client, spent):
    team, key, other = spent
    RequestLog.objects.filter(api_key=key).update(owner=key.owner)
    RequestLog.objects.filter(api_key=other).update(owner=other.owner)
    call_command("rollup", stdout=StringIO())  # rows changed in place: the roll-up summed again
    page = admin_client.get(URL).content.decode()
    people = page.split("Top people by spend", 1)[1].split("</table>", 1)[0]
    assert people.index("alice") < people.index("bob") and "$4.00" in people and "$0.50" in people
    assert f"owner__id__exact={key.owner.pk}" in people
