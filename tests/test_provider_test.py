"""The provider test: a real turn through the serving code path, with a verdict and diagnostics."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import make_provider

pytestmark = pytest.mark.django_db(transaction=True)


def run(name: str, *args: str) -> str:
    out = StringIO()
    call_command("testprovider", name, *args, stdout=out)
    return out.getvalue()


def test_over_websocket_is_green(upstream):
    provider = make_provider(upstream, allowed_models=["gpt-5.5"])
    out = run("alpha")
    assert "Verdict: Green" in out and "Transport: WebSocket" in out and "Model: gpt-5.5" in out
    assert upstream.ws_connections == 1
    provider.refresh_from_db()
    assert provider.last_test_verdict == "green" and provider.last_test_at is not None
    assert provider.last_test_report["handshake_ms"] is not None and provider.last_test_report["events"] > 3


def test_refused_upgrade_is_yellow_with_the_reason(upstream):
    upstream.ws_refuse_status = 404
    make_provider(upstream, allowed_models=["gpt-5.5"])
    out = run("alpha")
    assert "Verdict: Yellow" in out and "Transport: HTTP" in out
    assert "Fallback reason: The upstream refused the WebSocket upgrade" in out


def test_forced_http(upstream):
    make_provider(upstream)
    out = run("alpha", "--transport", "http", "--model", "gpt-5.5")
    assert "Verdict: Green" in out and "Transport: HTTP" in out and upstream.ws_connections == 0


def test_dead_upstream_is_red():
    from providers.models import Provider

    make_provider(None, name="dead", allowed_models=["gpt-5.5"], connect_timeout=2)
    with pytest.raises(CommandError):
        run("dead")
    assert Provider.objects.get(name="dead").last_test_verdict == "red"


def test_upstream_error_is_reported_without_secrets(upstream):
    upstream.api_key = "sk-the-right-one"  # the provider's stored key is now wrong
    make_provider(upstream, allowed_models=["gpt-5.5"])
    from providers.models import Provider

    provider = Provider.objects.get()
    provider.set_api_key("sk-wrong-secret-1234567890")
    provider.save()
    with pytest.raises(CommandError):
        run("alpha", "--transport", "http")
    report = Provider.objects.get().last_test_report
    assert report["verdict"] == "red" and report["error"]
    assert "sk-wrong-secret-1234567890" not in str(report)


def test_invalid_payload_is_refused_before_sending(upstream):
    make_provider(upstream)  # no allowed models, and no --model
    with pytest.raises(CommandError, match="model"):
        run("alpha")
    assert upstream.http_requests == 0 and upstream.ws_connections == 0


def test_the_test_uses_only_the_provider_under_test(upstream):
    make_provider(upstream, name="healthy", priority=1, allowed_models=["gpt-5.5"])
    make_provider(None, name="dead", priority=2, allowed_models=["gpt-5.5"], connect_timeout=2)
    with pytest.raises(CommandError):
        run("dead")
    assert upstream.ws_connections == 0 and upstream.http_requests == 0


def test_a_silent_upstream_is_reported_as_a_timeout_in_words(upstream):
    from providers.models import Provider

    upstream.hang = True
    make_provider(upstream, allowed_models=["gpt-5.5"], first_byte_timeout=1, connect_timeout=1)
    with pytest.raises(CommandError):
        run("alpha", "--transport", "http")
    error = Provider.objects.get().last_test_report["error"]
    assert error == "timed out after 1 s waiting for the first event", error


def test_a_refused_connection_is_reported_with_the_address():
    from providers.models import Provider

    provider = make_provider(None, name="dead", allowed_models=["gpt-5.5"], connect_timeout=2)
    with pytest.raises(CommandError):
        run("dead")
    address = provider.base_url.split("//")[1].split("/")[0]
    error = Provider.objects.get().last_test_report["error"]
    assert error == f"could not connect to {address} (connection refused)", error


def test_a_provider_set_to_http_only_is_green_not_degraded(upstream):
    from providers.models import Provider

    make_provider(upstream, allowed_models=["gpt-5.5"], websocket_mode="never")
    out = run("alpha")
    assert "Verdict: Green" in out and "Transport: HTTP" in out and upstream.ws_connections == 0
    assert Provider.objects.get(name="alpha").last_test_verdict == "green"
