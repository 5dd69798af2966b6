"""The usage dashboard and the provider test's model choice in Chromium, with screenshots in
test-artifacts/."""

from typing import Any

from django.utils import translation

from providers.models import Provider, Verdict
from proxy.models import ModelPrice
from tests import test_admin_browser
from tests.conftest import make_provider
from tests.test_admin_browser import PASSWORD, USERNAME, outside_the_browser_loop, shot
from tests.test_observability import fill_usage

browser, superuser = test_admin_browser.browser, test_admin_browser.superuser  # the same fixtures


def sign_in(page: Any, gateway: Any) -> None:
    page.goto(gateway.url + "/admin/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click('input[type="submit"]')


def test_dashboard_in_a_browser(gateway, superuser, browser):
    outside_the_browser_loop(fill_usage)
    page = browser
    sign_in(page, gateway)
    link = page.locator('a[href="/admin/proxy/usage/"]').first
    with page.expect_navigation():
        link.click()
    assert page.locator("#sluice-dashboard").is_visible()
    charts = page.locator("svg.sluice-chart")
    assert charts.count() == 3
    for i in range(3):  # every chart has bars with a height
        heights = (
            charts.nth(i)
            .locator("rect")
            .evaluate_all("rects => rects.map(r => r.getBoundingClientRect().height)")
        )
        assert heights and max(heights) > 5, f"chart {i} is empty"
    assert page.locator("#sluice-total-cost").inner_text() == "$7.50"
    # The top tables: keys, teams (with governance), models, providers.
    assert "north" in page.locator(".sluice-top").last.inner_text()
    assert page.locator("#sluice-refusals td").first.inner_text().startswith("Missing, invalid")
    shot(page, "dashboard")

    page.select_option("#id_provider", label="south")
    with page.expect_navigation():
        page.click('#sluice-dashboard input[type="submit"]')
    assert page.locator("#sluice-total-cost").inner_text() == "$0.75"

    page.goto(gateway.url + "/admin/proxy/requestlog/")
    assert page.locator("#result_list tbody tr").count() == 15
    for selector in ("html", "#changelist .results"):  # no scroll bar, on the page or around the table
        width, visible = page.locator(selector).evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert width <= visible, f"{selector} is {width} px wide in {visible} px"
    assert "12:00:00" in page.locator("#result_list tbody tr").first.inner_text()
    shot(page, "request-log")

    page.goto(gateway.url + "/admin/proxy/usage/")
    with page.expect_navigation():
        page.select_option("#sluice-language-select", "zh-hans")
    with translation.override("zh-hans"):
        heading = str(translation.gettext("Spend per day (USD)"))
    assert heading != "Spend per day (USD)"
    assert page.locator("#content h2").first.inner_text() == heading
    shot(page, "dashboard-zh-hans")


def test_provider_test_with_a_chosen_model(gateway, upstream, superuser, browser):
    def setup() -> Provider:
        # The shipped list prices may be there already (a transactional test empties them).
        ModelPrice.objects.exclude(model="gpt-5.5").delete()  # the priced models offered: this one
        ModelPrice.objects.update_or_create(
            model="gpt-5.5", defaults={"input_per_million": 1, "output_per_million": 2}
        )
        return make_provider(upstream)  # allows every model: the test needs one chosen

    provider = outside_the_browser_loop(setup)
    page = browser
    sign_in(page, gateway)
    page.goto(f"{gateway.url}/admin/providers/provider/{provider.pk}/change/")
    options = page.locator("#sluice-test-models option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["gpt-5.5"], "priced models are offered"
    page.fill("#sluice-test-model", "gpt-5.5")
    page.select_option("#sluice-test-transport", "http")
    with page.expect_navigation():
        page.click("#sluice-test-provider")
    assert str(Verdict.GREEN.label) in page.locator(".messagelist").inner_text()
    shot(page, "provider-test-model")
    stored = outside_the_browser_loop(lambda: Provider.objects.get(pk=provider.pk))
    assert stored.last_test_verdict == Verdict.GREEN and stored.last_test_report["model"] == "gpt-5.5"
    assert stored.last_test_report["transport"] == "http" and upstream.ws_connections == 0


def test_provider_test_failure_in_words(gateway, superuser, browser):
    provider = outside_the_browser_loop(
        lambda: make_provider(None, name="dead", allowed_models=["gpt-5.5"], connect_timeout=2)
    )
    page = browser
    sign_in(page, gateway)
    page.goto(f"{gateway.url}/admin/providers/provider/{provider.pk}/change/")
    with page.expect_navigation():
        page.click("#sluice-test-provider")
    message = page.locator(".messagelist").inner_text()
    port = provider.base_url.split(":")[2].split("/")[0]
    assert f"could not connect to 127.0.0.1:{port} (connection refused)" in message, message
    shot(page, "provider-test-refused")
