"""The pages an operator reads most (a key, a team, the dashboard, the request log) in English, Japanese
and Russian at 1280 and 390 px in Chromium: nothing runs off the page where it must not, and a screenshot
of each goes to test-artifacts/ to be looked at."""

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from tests import test_admin_browser
from tests.conftest import make_key, make_provider
from tests.test_admin_browser import ARTIFACTS, outside_the_browser_loop
from tests.test_dashboard_browser import sign_in

browser, superuser = test_admin_browser.browser, test_admin_browser.superuser  # the same fixtures


def operator_data() -> dict[str, int]:
    """A team with limits, keys with budgets of their own or none, and priced rows of several sessions,
    one of them tiny (a real $0.0000255)."""
    from proxy.models import RequestLog, Team

    team = Team.objects.create(
        name="research",
        rpm=600,
        daily_budget=Decimal("25"),
        monthly_budget=Decimal("400"),
        allowed_models=["gpt-5.5"],
    )
    key, _ = make_key("analysis-notebooks-shared", team=team, monthly_budget=Decimal("50"))
    other, _ = make_key("ci-nightly", username="bob", daily_budget=Decimal("2"))
    provider = make_provider(None, name="north")
    now = timezone.now()
    rows = []
    for i in range(40):
        holder = key if i % 3 else other
        rows.append(
            RequestLog(
                created_at=now - dt.timedelta(hours=i * 5),
                api_key=holder,
                owner=holder.owner,
                team=holder.team,
                provider=provider,
                requested_model="gpt-5.5",
                upstream_model="gpt-5.5",
                input_tokens=12_345 + i * 1000,
                cached_input_tokens=4_000,
                output_tokens=1_234,
                cost=Decimal("0.0000255") if i == 0 else Decimal("1.23456") * (i % 4 + 1),
                time_to_first_event_ms=812.5,
                duration_ms=4_567.0,
                client_transport="websocket" if i % 2 else "http",
                upstream_transport="websocket" if i % 2 else "http",
                session_id=f"019a2b3c-4d5e-7f60-8a9b-{i // 5:012d}",
            )
        )
    RequestLog.objects.bulk_create(rows)
    return {"key": key.pk, "team": team.pk}


def overflow(page: Any, selector: str) -> int:
    """How many pixels ``selector`` is wider than the room it has (0: it fits)."""
    width, visible = page.locator(selector).first.evaluate("e => [e.scrollWidth, e.clientWidth]")
    return max(width - visible, 0)


@pytest.mark.parametrize("language", ["en", "ja", "ru"])
def test_operator_pages_fit_and_are_photographed(gateway, superuser, browser, language):
    ids = outside_the_browser_loop(operator_data)
    page = browser
    sign_in(page, gateway)
    page.context.add_cookies([{"name": "django_language", "value": language, "url": gateway.url}])
    pages = {
        "key": f"/admin/proxy/apikey/{ids['key']}/change/",
        "keys": "/admin/proxy/apikey/",
        "team": f"/admin/proxy/team/{ids['team']}/change/",
        "dashboard": "/admin/proxy/usage/",
        "request-log": "/admin/proxy/requestlog/",
    }
    problems = []
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in pages.items():
            page.goto(gateway.url + path)
            assert page.locator("html").get_attribute("lang") == language
            page.screenshot(
                path=str(ARTIFACTS / f"admin-screen-{name}-{language}-{width}.png"), full_page=True
            )
            if width == 1280 and name in ("keys", "request-log"):
                spill = overflow(page, "html") + overflow(page, "#changelist .results")
                if spill:
                    problems.append(f"{name} at {width} px runs {spill} px wide")
            if name == "dashboard" and overflow(page, "html"):
                problems.append(f"the dashboard runs {overflow(page, 'html')} px wide at {width} px")
            if name == "dashboard":
                right = page.locator(".sluice-totals > div").evaluate_all(
                    "ds => Math.max(...ds.map(d => d.getBoundingClientRect().right))"
                )
                if right > width:
                    problems.append(f"dashboard totals reach {right:.0f} px at {width} px")
    assert not problems, problems


def test_a_key_page_on_a_phone_has_no_gaps_between_limits(gateway, superuser, browser):
    ids = outside_the_browser_loop(operator_data)
    page = browser
    sign_in(page, gateway)
    page.set_viewport_size({"width": 390, "height": 900})
    page.goto(f"{gateway.url}/admin/proxy/apikey/{ids['key']}/change/")
    heights = page.locator("fieldset.sluice-limits .form-multiline > div:first-child").evaluate_all(
        "ds => ds.map(d => d.getBoundingClientRect().height)"
    )
    assert heights and max(heights) < 200, heights


def test_the_effective_limits_fit_a_1280_px_key_page(gateway, superuser, browser):
    ids = outside_the_browser_loop(operator_data)
    page = browser
    sign_in(page, gateway)
    page.context.add_cookies([{"name": "django_language", "value": "ja", "url": gateway.url}])
    page.goto(f"{gateway.url}/admin/proxy/apikey/{ids['key']}/change/")
    assert overflow(page, "table.sluice-effective") == 0
    table_right, cell_right, fieldset_right = page.evaluate(
        """() => [document.querySelector("table.sluice-effective"),
                  document.querySelector("table.sluice-effective tr:last-child td:last-child"),
                  document.querySelector(".field-effective_limits").closest("fieldset")]
                 .map(e => e.getBoundingClientRect().right)"""
    )
    assert max(table_right, cell_right) <= fieldset_right, (table_right, cell_right, fieldset_right)
