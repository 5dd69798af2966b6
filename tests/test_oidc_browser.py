"""Single sign-on in Chromium: "Sign in with ..." on the admin's login page, the provider's own login and
consent pages (panva's oidc-provider), and back into the admin, in English and Japanese. Screenshots go to
test-artifacts/oidc-*.png."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import translation

from identity import oidc, signin
from proxy.models import Team
from tests.conftest import require
from tests.oidcsupport import NodeProvider
from tests.test_admin_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    outside_the_browser_loop,
    sync_playwright,
)
from tests.test_oidc import USERS, configure


@pytest.fixture
def provider(gateway: Any, settings: Any) -> Iterator[NodeProvider]:
    require(shutil.which("node") is not None, "node is not installed")
    with NodeProvider(gateway.url + "/auth/oidc/callback/", USERS, gateway.url + "/admin/login/") as running:
        configure(settings, running.issuer)
        yield running
    oidc.forget()


@pytest.fixture
def chromium() -> Iterator[Any]:
    require(sync_playwright is not None, "playwright is not installed (pip install playwright)")
    require(CHROMIUM.exists(), "chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"oidc-{name}.png"), full_page=True)


def sign_in_at_provider(page: Any, login: str, name: str) -> None:
    """The provider's development login and consent pages, as a person fills them."""
    page.fill('input[name="login"]', login)
    page.fill('input[name="password"]', "any password")
    if login != "alice":
        shot(page, f"{name}-2-provider-login")
    with page.expect_navigation():
        page.click('button[type="submit"]')
    if page.locator('input[name="prompt"][value="consent"]').count():
        with page.expect_navigation():
            page.click('button[type="submit"]')


@pytest.mark.parametrize(("language", "login"), [("en", "root"), ("ja", "mallory"), ("ja", "alice")])
def test_sign_in_with_the_provider_from_the_admin_login_page(provider, gateway, chromium, language, login):
    outside_the_browser_loop(lambda: Team.objects.create(name="Platform", idp_groups=["eng"]))
    with translation.override(language):
        button = translation.gettext("Sign in with %(name)s") % {"name": "TestIdP"}
        refused = str(signin.NO_TEAM)
    assert language == "en" or "TestIdP" in button and "Sign in" not in button
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale=language)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(gateway.url + "/admin/")
        assert "/admin/login/" in page.url
        assert page.locator("#sluice-sso-button").inner_text().strip() == button
        if login != "alice":
            shot(page, f"{language}-1-admin-login")
        with page.expect_navigation():
            page.click("#sluice-sso-button")
        assert page.url.startswith(provider.issuer)
        sign_in_at_provider(page, login, language)
        if login == "root":  # in the admin group: the admin's index, signed in
            assert page.url == gateway.url + "/admin/"
            assert page.locator("#user-tools").inner_text().upper().count("ROOT") == 1
            shot(page, f"{language}-3-admin")
        elif login == "alice":  # a team's member, not staff: the portal, although she came from the admin
            assert page.url == gateway.url + "/portal/"
        else:  # in no mapped group: the refusal, in the browser's language
            assert page.url.startswith(gateway.url + "/auth/oidc/callback/")
            assert page.locator("#sluice-sign-in-refused .errornote").inner_text().strip() == refused
            shot(page, f"{language}-3-refused")
    finally:
        context.close()
