"""The admin in a real browser against the served gateway: sign in, switch to Japanese, flip the client
WebSocket switch, and run the provider test. Screenshots of every page go to test-artifacts/."""

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext_lazy
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from providers.models import Provider, Verdict
from proxy.admin.modeladmins import USAGE_FIELDS
from settings_app.models import SystemSettings
from tests.conftest import ServerThread, make_provider, require

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # a developer machine without the browser tooling
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
T = TypeVar("T")
USERNAME, PASSWORD = "root", "a-long-admin-password-for-tests"


@pytest.fixture
def superuser(transactional_db: None, django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser(USERNAME, "root@example.test", PASSWORD)


@pytest.fixture
def provider(transactional_db: None, upstream: Any) -> Provider:
    return make_provider(upstream, allowed_models=["gpt-5.5"])


def outside_the_browser_loop(function: Callable[[], T]) -> T:
    """Run ORM code while Playwright's event loop owns this thread (Django refuses it there)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function).result()


@pytest.fixture
def browser() -> Iterator["Page"]:
    require(sync_playwright is not None, "playwright is not installed (pip install playwright)")
    require(CHROMIUM.exists(), "chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            context.close()
            chromium.close()


def shot(page: "Page", name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)


def in_japanese(text: Any) -> str:
    """A lazy translation rendered in Japanese, checked to differ from its English."""
    with translation.override("ja"):
        translated = str(text)
    with translation.override("en"):
        assert translated != str(text), f"no Japanese for {text!r}"
    return translated


def upgrade_status(gateway: ServerThread) -> int:
    """The HTTP status that answers a WebSocket upgrade on /v1/responses without a key."""
    try:
        with connect(gateway.url.replace("http://", "ws://") + "/v1/responses", open_timeout=10):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def save(page: "Page") -> None:
    with page.expect_navigation():
        page.click('input[name="_save"]')


def test_admin_in_a_browser(gateway, upstream, superuser, provider, browser):
    labels = {
        "site": in_japanese(gettext_lazy("Sluice administration")),
        "client": in_japanese(SystemSettings._meta.get_field("client_websockets").verbose_name),
        "green": in_japanese(Verdict.GREEN.label),
        "test": in_japanese(gettext_lazy("Test provider")),
    }
    assert labels["client"] == "クライアントの WebSocket を受け付ける"
    page = browser

    page.goto(gateway.url + "/admin/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    shot(page, "1-login")
    with page.expect_navigation():
        page.click('input[type="submit"]')
    assert page.locator("#site-name").inner_text() == "Sluice administration"

    with page.expect_navigation():
        page.select_option("#sluice-language-select", "ja")
    assert page.get_attribute("html", "lang") == "ja"
    assert page.locator("#site-name").inner_text() == labels["site"]
    shot(page, "2-index-ja")

    page.goto(gateway.url + "/admin/settings_app/systemsettings/")
    assert page.url.endswith("/admin/settings_app/systemsettings/1/change/")
    assert page.locator('label[for="id_client_websockets"]').inner_text().strip() == labels["client"]
    checkbox = page.locator("#id_client_websockets")
    assert checkbox.is_checked()
    assert upgrade_status(gateway) == 401  # accepted for the key check, which fails

    checkbox.uncheck()
    save(page)
    page.goto(gateway.url + "/admin/settings_app/systemsettings/1/change/")
    assert not page.locator("#id_client_websockets").is_checked()
    assert page.get_attribute("html", "lang") == "ja"
    shot(page, "3-settings-off")
    assert upgrade_status(gateway) == 426  # refused at once, no restart

    page.locator("#id_client_websockets").check()
    save(page)
    page.reload()
    assert page.locator("#id_client_websockets").is_checked()
    shot(page, "4-settings-on")
    assert upgrade_status(gateway) == 401

    page.goto(f"{gateway.url}/admin/providers/provider/{provider.pk}/change/")
    button = page.locator("#sluice-test-provider")
    assert button.inner_text().strip() == labels["test"]
    with page.expect_navigation():
        button.click()
    assert page.url.endswith(f"/admin/providers/provider/{provider.pk}/change/")
    assert page.locator(".field-last_test .sluice-verdict").inner_text().strip() == labels["green"]
    assert page.locator(".sluice-report .sluice-verdict").inner_text().strip() == labels["green"]
    assert labels["green"] in page.locator(".messagelist").inner_text()
    shot(page, "5-provider-tested")

    page.goto(gateway.url + "/admin/providers/provider/")
    assert page.locator("#result_list .sluice-verdict").inner_text().strip() == labels["green"]
    shot(page, "6-providers")

    assert upstream.ws_connections == 1
    stored = outside_the_browser_loop(lambda: (SystemSettings.load(), Provider.objects.get(pk=provider.pk)))
    assert stored[0].client_websockets is True
    assert stored[1].last_test_verdict == Verdict.GREEN


@pytest.mark.parametrize("language", ["en", "ru"])
def test_usage_stands_in_one_column_beside_the_limits(gateway, superuser, browser, language):
    from decimal import Decimal

    from proxy.models import Team
    from tests.conftest import make_key

    def setup() -> tuple[Any, Any]:
        team = Team.objects.create(name="research", rpm=100, daily_budget=Decimal("5"), concurrency=3)
        return make_key(rpm=10, concurrency=2, monthly_budget=Decimal("20"), team=team)[0], team

    key, team = outside_the_browser_loop(setup)
    page = browser
    page.goto(gateway.url + "/admin/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click('input[type="submit"]')
    if language != "en":
        with page.expect_navigation():
            page.select_option("#sluice-language-select", language)
    for kind, pk in (("apikey", key.pk), ("team", team.pk)):
        page.goto(f"{gateway.url}/admin/proxy/{kind}/{pk}/change/")
        # Every usage label starts at one x, and so does every usage value, whatever the limit beside it
        # (a short number field, a wider budget, a help text under it) or the language's label lengths.
        lefts = {
            part: page.locator(f".fieldBox.field-{name} {selector}").evaluate(
                "e => e.getBoundingClientRect().left"
            )
            for name in USAGE_FIELDS
            for part, selector in ((f"{name} label", "label"), (f"{name} value", ".readonly"))
        }
        labels = {round(x) for part, x in lefts.items() if part.endswith("label")}
        values = {round(x) for part, x in lefts.items() if part.endswith("value")}
        shot(page, f"{kind}-limits-{language}")
        assert (len(labels), len(values)) == (1, 1), sorted(lefts.items())


def test_admin_pages_have_an_icon(gateway, superuser, browser):
    import httpx

    page = browser
    page.goto(gateway.url + "/admin/login/")
    assert page.locator('link[rel="icon"]').count() == 1
    href = page.locator('link[rel="icon"]').get_attribute("href")
    icon = httpx.get(gateway.url + href, timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/"), icon
    # Browsers and tools that ask at the conventional address find it there too.
    conventional = httpx.get(gateway.url + "/favicon.ico", follow_redirects=True, timeout=10)
    assert (conventional.status_code, conventional.content) == (200, icon.content)
