"""Management commands a deployment script calls: their output is the contract."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


def test_createapikey_prints_the_key_alone_on_its_last_line():
    from proxy.auth import _load
    from proxy.models import ApiKey, hash_key

    out = StringIO()
    call_command("createapikey", "--name", "ci", "--user", "deploy", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert raw.startswith("sk-sluice-") and " " not in raw
    key = ApiKey.objects.get(name="ci")
    assert key.owner.username == "deploy" and key.hashed_key == hash_key(raw) and raw not in key.prefix
    assert hash_key(raw) in _load()


def test_createprovider_stores_the_key_encrypted():
    from providers.models import Provider

    out = StringIO()
    call_command(
        "createprovider",
        "--name", "openai",
        "--base-url", "https://api.example.com/v1",
        "--api-key", "sk-live-secret-value",
        "--priority", "5",
        "--weight", "3",
        "--websocket", "never",
        "--models", "gpt-5.5, gpt-5-mini",
        stdout=out,
    )  # fmt: skip
    provider = Provider.objects.get(name="openai")
    assert (provider.priority, provider.weight, provider.websocket_mode) == (5, 3, "never")
    assert provider.allowed_models == ["gpt-5.5", "gpt-5-mini"]
    assert (
        "sk-live-secret-value" not in provider.api_key_encrypted
        and provider.api_key == "sk-live-secret-value"
    )
    assert "sk-live-secret-value" not in out.getvalue()


def test_createprovider_rejects_a_bad_url():
    with pytest.raises(CommandError):
        call_command(
            "createprovider", "--name", "x", "--base-url", "not a url", "--api-key", "k", stdout=StringIO()
        )
