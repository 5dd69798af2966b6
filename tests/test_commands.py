"""Management commands a deployment script calls: their output is the contract."""

import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


def test_createapikey_prints_the_key_alone_on_its_last_line():
    from proxy.governance.auth import _load
    from proxy.models import ApiKey, hash_key

    out = StringIO()
    call_command("createapikey", "--name", "ci", "--user", "deploy", "--create-user", stdout=out)
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


def test_createapikey_refuses_a_missing_user_unless_asked_to_create_it():
    from django.contrib.auth import get_user_model

    with pytest.raises(CommandError, match="--create-user"):
        call_command("createapikey", "--name", "ci", "--user", "nobody", stdout=StringIO())
    assert not get_user_model().objects.filter(username="nobody").exists()


def test_createteam_and_a_key_with_limits_in_it():
    from decimal import Decimal

    from proxy.governance.auth import _load
    from proxy.models import ApiKey, Team

    out = StringIO()
    call_command(
        "createteam", "--name", "research",
        "--rpm", "60", "--tpm", "100000", "--concurrency", "4", "--sockets", "8",
        "--daily-budget", "5", "--monthly-budget", "100.50", "--models", "gpt-5.5, gpt-5-mini",
        stdout=out,
    )  # fmt: skip
    team = Team.objects.get(name="research")
    assert (team.rpm, team.tpm, team.concurrency, team.sockets) == (60, 100000, 4, 8)
    assert (team.daily_budget, team.monthly_budget) == (Decimal("5"), Decimal("100.50"))
    assert team.allowed_models == ["gpt-5.5", "gpt-5-mini"] and team.enabled
    out = StringIO()
    call_command(
        "createapikey", "--name", "bot", "--user", "deploy", "--create-user", "--team", "research",
        "--rpm", "10", "--daily-budget", "0.50", "--models", "gpt-5-mini",
        stdout=out,
    )  # fmt: skip
    key = ApiKey.objects.get(name="bot")
    assert (key.team, key.rpm, key.daily_budget, key.allowed_models) == (
        team,
        10,
        Decimal("0.50"),
        ["gpt-5-mini"],
    )
    policy = _load()[key.hashed_key].policy
    assert [(q.scope, q.rpm) for q in policy.quotas] == [(f"k{key.pk}", 10), (f"t{team.pk}", 60)]
    assert policy.models == {"gpt-5-mini"}
    call_command("createteam", "--name", "research", "--rpm", "30", stdout=StringIO())
    team.refresh_from_db()
    assert team.rpm == 30 and team.tpm == 100000, "a second run updates only the limits it is given"


def test_createapikey_refuses_an_unknown_team_and_bad_limits():
    with pytest.raises(CommandError, match="createteam"):
        call_command("createapikey", "--name", "x", "--team", "ghosts", stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("createteam", "--name", "x", "--daily-budget", "lots", stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("createteam", "--name", "x", "--rpm", "-1", stdout=StringIO())


def test_a_budget_finer_than_a_cent_is_a_command_error_not_a_traceback():
    from proxy.models import ApiKey, Team

    with pytest.raises(CommandError, match="--daily-budget: "):
        call_command("createapikey", "--name", "x", "--daily-budget", "0.001", stdout=StringIO())
    with pytest.raises(CommandError, match="--monthly-budget: "):
        call_command("createteam", "--name", "x", "--monthly-budget", "1.005", stdout=StringIO())
    assert not ApiKey.objects.filter(name="x").exists() and not Team.objects.filter(name="x").exists()


def test_loadprices_adds_and_replaces(tmp_path):
    import json
    from decimal import Decimal

    from proxy.models import ModelPrice

    ModelPrice.objects.update_or_create(
        model="gpt-5.5", defaults={"input_per_million": 1, "output_per_million": 1}
    )
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "gpt-5.5": {
                    "input_per_million": 5,
                    "cached_input_per_million": 0.5,
                    "output_per_million": 30,
                },
                "house-model": {"input_per_million": "0.1", "output_per_million": "0.2"},
            }
        )
    )
    out = StringIO()
    call_command("loadprices", str(path), stdout=out)
    price = ModelPrice.objects.get(model="gpt-5.5")
    assert (price.input_per_million, price.cached_input_per_million, price.output_per_million) == (
        Decimal(5),
        Decimal("0.5"),
        Decimal(30),
    )
    house = ModelPrice.objects.get(model="house-model")
    assert house.cached_input_per_million == house.input_per_million == Decimal("0.1")
    assert "1 added, 1 replaced" in out.getvalue()
    call_command("loadprices", str(path), "--replace", stdout=StringIO())
    assert set(ModelPrice.objects.values_list("model", flat=True)) == {"gpt-5.5", "house-model"}
    path.write_text(json.dumps({"broken": {"input_per_million": 1}}))
    with pytest.raises(CommandError, match="Not a price"):
        call_command("loadprices", str(path), stdout=StringIO())


def test_shipped_prices_cover_the_models_codex_uses():
    import importlib

    from django.apps import apps

    from proxy.governance.prices import price_for
    from proxy.models import ModelPrice

    migration = importlib.import_module("proxy.migrations.0003_list_prices")
    ModelPrice.objects.all().delete()
    migration.load(apps, None)
    prices = {p.model: p for p in ModelPrice.objects.all()}
    for model in ("gpt-5.5", "gpt-5.5-pro", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.2-codex"):
        assert model in prices
    assert price_for(prices, "gpt-5.5-2026-04-23") is prices["gpt-5.5"]
    assert price_for(prices, "gpt-5.6") is None, "an unknown model is never priced like a relative"
    assert prices["gpt-5.5"].input_per_million == 5 and prices["gpt-5.5"].output_per_million == 30


def test_filllogs_fills_the_log_with_rows_of_its_keys():
    from proxy.management.commands import filllogs
    from proxy.models import ApiKey, RequestLog

    out = StringIO()
    call_command("filllogs", "--rows", "500", "--days", "3", stdout=out)
    assert "500" in out.getvalue()
    assert RequestLog.objects.count() == 500 and ApiKey.objects.count() == filllogs.KEYS
    keyed = RequestLog.objects.exclude(api_key=None)
    assert keyed.exists() and not keyed.filter(owner=None).exists()
    assert RequestLog.objects.filter(cost__gt=0).exists()


def test_filllogs_that_fails_leaves_nothing_behind():
    from django.contrib.auth import get_user_model

    from providers.models import Provider
    from proxy.models import ApiKey, RequestLog

    # Ten million days back is before the first year a date can hold: the rows fail after the keys, user
    # and providers were made.
    with pytest.raises((ValueError, OverflowError)):
        call_command("filllogs", "--rows", "20", "--days", "10000000", stdout=StringIO())
    assert not ApiKey.objects.exists() and not Provider.objects.exists()
    assert not RequestLog.objects.exists()
    assert not get_user_model().objects.filter(username="filllogs").exists()


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [("--daily-budget", "abc", "Not an amount in USD: abc"), ("--rpm", "-1", "Not a whole number: -1")],
)
def test_a_bad_limit_flag_is_a_usage_error_not_a_traceback(flag, value, said):
    done = subprocess.run(
        [sys.executable, "manage.py", "createteam", "--name", "t", flag, value],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
