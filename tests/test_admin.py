"""The admin: provider secrets stay secret, API keys are shown once, settings apply at once, logs filter,
and the provider test stores and shows its verdict."""

import asyncio
import html
import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.urls import reverse

from providers.models import Provider, Verdict
from proxy.governance.auth import authenticate
from proxy.models import ApiKey, RequestLog, hash_key
from settings_app.models import SystemSettings
from settings_app.runtime import system_settings
from tests.conftest import make_key, make_provider

PLAINTEXT = "sk-upstream-plaintext-0123456789abcdef"


def provider_form(**overrides: Any) -> dict[str, Any]:
    form = {
        "name": "alpha",
        "base_url": "https://api.example.test/v1",
        "api_key": PLAINTEXT,
        "enabled": "on",
        "priority": "100",
        "weight": "1",
        "allowed_models": "gpt-5.5",
        "model_redirects-key": "",
        "model_redirects-value": "",
        "websocket_mode": "auto",
        "connect_timeout": "10",
        "first_byte_timeout": "120",
        "idle_timeout": "300",
        "proxy_url": "",
        "extra_headers-key": "",
        "extra_headers-value": "",
        "_save": "Save",
    }
    form.update(overrides)
    return form


def page(client: Any, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def results(text: str) -> str:
    """The change list's table of rows, without the filters beside it."""
    return text.split('id="result_list"', 1)[1].split("</table>", 1)[0]


# Providers: the upstream key is write-only.


def test_provider_added_in_the_admin_keeps_its_key_encrypted(admin_client):
    response = admin_client.post(reverse("admin:providers_provider_add"), provider_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    provider = Provider.objects.get(name="alpha")
    assert provider.api_key_encrypted and provider.api_key_encrypted != PLAINTEXT
    assert PLAINTEXT not in provider.api_key_encrypted
    assert provider.api_key == PLAINTEXT
    assert provider.allowed_models == ["gpt-5.5"]

    change = page(admin_client, reverse("admin:providers_provider_change", args=[provider.pk]))
    assert 'name="api_key"' in change
    assert PLAINTEXT not in change and PLAINTEXT not in html.unescape(change)
    assert provider.api_key_encrypted not in change


def test_saving_a_provider_with_a_blank_key_keeps_the_old_one(admin_client):
    admin_client.post(reverse("admin:providers_provider_add"), provider_form())
    provider = Provider.objects.get(name="alpha")
    token = provider.api_key_encrypted
    url = reverse("admin:providers_provider_change", args=[provider.pk])

    response = admin_client.post(url, provider_form(api_key="", priority="5"))
    assert response.status_code == 302, response.content.decode()[:2000]
    provider.refresh_from_db()
    assert provider.priority == 5
    assert provider.api_key_encrypted == token and provider.api_key == PLAINTEXT

    admin_client.post(url, provider_form(api_key="sk-rotated"))
    provider.refresh_from_db()
    assert provider.api_key == "sk-rotated"


def test_a_new_provider_without_a_key_is_refused(admin_client):
    response = admin_client.post(reverse("admin:providers_provider_add"), provider_form(api_key=""))
    assert response.status_code == 200
    assert "A new provider needs an API key." in response.content.decode()
    assert not Provider.objects.exists()


def test_provider_form_labels_start_with_a_capital_like_the_others(admin_client):
    text = page(admin_client, reverse("admin:providers_provider_add"))
    labels = re.findall(r'<label[^>]*for="id_[a-z_]+"[^>]*>([^<:]+):</label>', text)
    assert {"Base URL", "Allowed models", "Model redirects", "Extra headers"} <= set(labels), labels
    assert [label for label in labels if not label[0].isupper()] == []


# API keys: the secret exists in clear once, on the page that answers the add form.


def test_a_new_key_is_owned_by_whoever_adds_it_unless_changed(admin_client, admin_user):
    form = page(admin_client, reverse("admin:proxy_apikey_add"))
    owner = form.split('name="owner"', 1)[1].split("</select>", 1)[0]
    assert re.search(rf'<option value="{admin_user.pk}" selected>', owner), owner


def test_api_key_secret_is_shown_once_and_authenticates(admin_client, admin_user):
    response = admin_client.post(
        reverse("admin:proxy_apikey_add"),
        {
            "name": "ci",
            "owner": admin_user.pk,
            "enabled": "on",
            "expires_at_0": "",
            "expires_at_1": "",
            "_save": "1",
        },
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    created = response.content.decode()
    match = re.search(r'id="sluice-new-key"[^>]*value="([^"]+)"', created)
    assert match, created[:2000]
    secret = html.unescape(match.group(1))
    assert secret.startswith("sk-sluice-")

    key = ApiKey.objects.get(name="ci")
    assert key.hashed_key == hash_key(secret) and secret not in key.hashed_key
    assert secret.startswith(key.prefix)
    client = async_to_sync(authenticate)(secret)
    assert client is not None and client.key_id == key.pk
    assert async_to_sync(authenticate)(secret + "x") is None

    for url in (
        reverse("admin:proxy_apikey_change", args=[key.pk]),
        reverse("admin:proxy_apikey_changelist"),
    ):
        text = page(admin_client, url)
        assert key.prefix in text
        assert secret not in text and key.hashed_key not in text


# System settings: a singleton whose changes apply without a restart.


def test_settings_list_redirects_to_the_singleton(admin_client):
    response = admin_client.get(reverse("admin:settings_app_systemsettings_changelist"))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:settings_app_systemsettings_change", args=[1])
    assert SystemSettings.objects.count() == 1


FORCED_WARNING = (
    "“Accept client WebSockets” is forced off by the environment variable SLUICE_FORCE_CLIENT_WEBSOCKETS"
)


def test_settings_page_warns_about_a_forced_switch(admin_client, settings):
    url = reverse("admin:settings_app_systemsettings_change", args=[1])
    assert FORCED_WARNING not in page(admin_client, url)

    settings.SLUICE_FORCE_CLIENT_WEBSOCKETS = "off"
    system_settings.invalidate()
    text = page(admin_client, url)
    assert FORCED_WARNING in text
    assert "Use WebSockets to upstream providers" not in text.split("messagelist")[1].split("</ul>")[0]
    state = system_settings.get()
    assert state.client_websockets is False and state.client_websockets_forced


def test_turning_client_websockets_off_applies_without_a_restart(admin_client, transactional_db, settings):
    # A poll interval far longer than the test: the change must reach the snapshot through its version.
    settings.SLUICE_CONFIG_POLL_SECONDS = 3600
    assert system_settings.get().client_websockets is True
    url = reverse("admin:settings_app_systemsettings_change", args=[1])

    response = admin_client.post(url, {"upstream_websockets": "on", "_save": "Save"})
    assert response.status_code == 302
    assert SystemSettings.load().client_websockets is False
    assert system_settings.get().client_websockets is False
    assert system_settings.get().upstream_websockets is True

    admin_client.post(url, {"client_websockets": "on", "upstream_websockets": "on", "_save": "Save"})
    assert system_settings.get().client_websockets is True


# Request log: read-only, filterable by everything an operator asks about.


def test_a_request_log_row_shows_its_timings_to_a_tenth_of_a_millisecond(admin_client):
    row = RequestLog.objects.create(
        requested_model="gpt-5.5",
        status=200,
        client_transport="websocket",
        duration_ms=4.992768999727559,
        time_to_first_event_ms=1234.56,
    )
    text = page(admin_client, reverse("admin:proxy_requestlog_change", args=[row.pk]))

    def shown(field: str) -> str:
        return text.split(f'field-{field}"', 1)[1].split('class="readonly">', 1)[1].split("<", 1)[0]

    assert (shown("duration_shown"), shown("first_event_shown"), shown("handshake_shown")) == (
        "5.0",
        "1,234.6",
        "—",
    )
    assert "4.9927" not in text and "Duration (ms)" in text


def test_request_log_list_has_the_filters(admin_client):
    alpha, beta = make_provider(None, "alpha"), make_provider(None, "beta")
    team, _raw = make_key("team")
    ops, _raw = make_key("ops", username="bob")
    RequestLog.objects.create(
        api_key=team,
        provider=alpha,
        requested_model="gpt-5.5",
        status=200,
        client_transport="websocket",
        upstream_transport="http",
        fallback_reason="upgrade_refused",
    )
    RequestLog.objects.create(
        api_key=ops, provider=beta, requested_model="gpt-5-mini", status=502, client_transport="http"
    )
    url = reverse("admin:proxy_requestlog_changelist")
    text = page(admin_client, url)
    for title in (
        "provider",
        "API key",
        "status",
        "client transport",
        "upstream transport",
        "fallback reason",
        "endpoint",
    ):
        assert f'data-filter-title="{title}"' in text, title
    assert "The upstream refused the WebSocket upgrade" in text
    assert 'href="/admin/proxy/requestlog/add/"' not in text

    rows = results(page(admin_client, f"{url}?provider__id__exact={beta.pk}"))
    assert "gpt-5-mini" in rows and "gpt-5.5" not in rows
    rows = results(page(admin_client, f"{url}?fallback_reason__exact=upgrade_refused"))
    assert "gpt-5.5" in rows and "gpt-5-mini" not in rows
    rows = results(page(admin_client, f"{url}?api_key__id__exact={ops.pk}"))
    assert "gpt-5-mini" in rows and "gpt-5.5" not in rows


# The provider test, against the fake upstream.


def badge(text: str) -> str:
    match = re.search(r'class="sluice-verdict"[^>]*>([^<]+)<', text)
    assert match, "no verdict badge on the page"
    return match.group(1)


def under_a_running_loop(call: Any) -> Any:
    """Run an admin request as the ASGI server runs a sync view: in a worker thread under a running event
    loop, which the provider test's ``async_to_sync`` then uses (a bare test client would give it a new
    loop per call, and leave that loop's upstream pool unclosed). The pool is closed with the loop."""
    from proxy.upstream.http import close_session

    async def run() -> Any:
        try:
            return await sync_to_async(call)()
        finally:
            await close_session()

    return asyncio.run(run())


@pytest.mark.parametrize("how", ["button", "action"])
def test_provider_test_stores_and_shows_a_green_verdict(admin_client, transactional_db, upstream, how):
    provider = make_provider(upstream, allowed_models=["gpt-5.5"])
    change_url = reverse("admin:providers_provider_change", args=[provider.pk])
    assert 'id="sluice-test-provider"' in page(admin_client, change_url)

    if how == "button":
        response = under_a_running_loop(
            lambda: admin_client.post(reverse("admin:providers_provider_test", args=[provider.pk]))
        )
        assert response.status_code == 302 and response["Location"] == change_url
    else:
        response = under_a_running_loop(
            lambda: admin_client.post(
                reverse("admin:providers_provider_changelist"),
                {"action": "test_selected", "_selected_action": [provider.pk], "index": "0"},
            )
        )
        assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.last_test_verdict == Verdict.GREEN, provider.last_test_report
    assert provider.last_test_at is not None
    assert provider.last_test_report["transport"] == "websocket"
    assert upstream.ws_connections == 1 and upstream.http_requests == 0

    change = page(admin_client, change_url)
    assert f"Test of alpha: {Verdict.GREEN.label}" in change
    assert badge(change) == Verdict.GREEN.label
    assert 'class="sluice-report"' in change
    assert badge(page(admin_client, reverse("admin:providers_provider_changelist"))) == Verdict.GREEN.label


def test_provider_test_of_an_unreachable_provider_is_red(admin_client, transactional_db):
    provider = make_provider(None, allowed_models=["gpt-5.5"], connect_timeout=2.0)
    under_a_running_loop(
        lambda: admin_client.post(reverse("admin:providers_provider_test", args=[provider.pk]))
    )
    provider.refresh_from_db()
    assert provider.last_test_verdict == Verdict.RED
    assert provider.last_test_report["error"]
    change = page(admin_client, reverse("admin:providers_provider_change", args=[provider.pk]))
    assert badge(change) == Verdict.RED.label


def test_provider_test_without_a_model_says_so_and_stores_nothing(admin_client, transactional_db, upstream):
    provider = make_provider(upstream)
    response = admin_client.post(reverse("admin:providers_provider_test", args=[provider.pk]), follow=True)
    assert "Test of alpha: The test needs a model" in response.content.decode()
    provider.refresh_from_db()
    assert provider.last_test_verdict == "" and provider.last_test_at is None
    assert upstream.http_requests == 0


@pytest.mark.parametrize("language", ["ja", "zh-hans", "zh-hant", "ru", "en"])
def test_the_provider_test_messages_keep_the_provider_name_as_written(
    admin_client, transactional_db, upstream, language
):
    """The admin capitalises a message's first letter: a translation that starts with the name quotes it."""
    tested = make_provider(upstream, allowed_models=["gpt-5.5"])  # a verdict
    refused = make_provider(upstream, "beta")  # no model to test with: an error
    for provider in (tested, refused):
        response = under_a_running_loop(
            lambda provider=provider: admin_client.post(
                reverse("admin:providers_provider_test", args=[provider.pk]),
                follow=True,
                headers={"accept-language": language},
            )
        )
        text = response.content.decode().split('class="messagelist"', 1)[1].split("</ul>", 1)[0]
        assert provider.name in text and provider.name.capitalize() not in text, text


def test_provider_test_needs_a_post(admin_client, upstream):
    provider = make_provider(upstream, allowed_models=["gpt-5.5"])
    response = admin_client.get(reverse("admin:providers_provider_test", args=[provider.pk]))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.last_test_at is None
