"""The admin's key and team pages: limits with their current usage beside them, in every language; the
request log says "price unknown" rather than a cost of 0."""

import re
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse
from django.utils import translation
from django.utils.text import capfirst

from proxy.common.record import TurnRecord
from proxy.governance import limits
from proxy.governance.auth import authenticate
from tests.conftest import make_key, request_logs

pytestmark = pytest.mark.django_db(transaction=True)


def page(client, url: str, language: str = "en") -> str:
    response = client.get(url, headers={"accept-language": language})
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def readonly(text: str, field: str) -> str:
    """The value shown for a read-only field on a change page."""
    match = re.search(rf'field-{field}\b.*?<div class="readonly">(.*?)</div>', text, re.S)
    assert match, f"no read-only field {field}"
    return match.group(1).strip()


def test_key_and_team_pages_show_usage_beside_each_limit(admin_client, settings):
    from proxy.models import Team

    settings.SLUICE_RATE_WINDOW_SECONDS = 3600
    team = Team.objects.create(name="research", rpm=100, daily_budget=Decimal("5"), concurrency=3)
    key, raw = make_key(rpm=10, concurrency=2, monthly_budget=Decimal("20"), team=team)
    client = async_to_sync(authenticate)(raw)
    held = async_to_sync(limits.admit)(client, "gpt-5.5")  # one turn in flight
    done = async_to_sync(limits.admit)(client, "gpt-5.5")
    record = TurnRecord(key_id=key.pk, client_transport="http")
    record.outcome.input_tokens, record.outcome.output_tokens = 1000, 500
    done.release(record)

    text = page(admin_client, reverse("admin:proxy_apikey_change", args=[key.pk]))
    assert readonly(text, "requests_now") == "2"
    assert readonly(text, "tokens_now") == "1,500"
    assert readonly(text, "in_flight_now") == "1"
    assert readonly(text, "spend_today") == "$0.00"  # no price for gpt-5.5 in this test: nothing spent
    assert 'name="rpm" value="10"' in text and 'name="concurrency" value="2"' in text
    team_page = page(admin_client, reverse("admin:proxy_team_change", args=[team.pk]))
    assert readonly(team_page, "requests_now") == "2" and readonly(team_page, "in_flight_now") == "1"
    held.release()
    text = page(admin_client, reverse("admin:proxy_apikey_change", args=[key.pk]))
    assert readonly(text, "in_flight_now") == "0"


def test_limit_labels_in_every_language(admin_client):
    key, _ = make_key(rpm=10)
    url = reverse("admin:proxy_apikey_change", args=[key.pk])
    seen = set()
    for language in ("en", "zh-hans", "zh-hant", "ja", "ru"):
        with translation.override(language):
            label = capfirst(translation.gettext("requests this minute"))
            title = str(translation.gettext("Limits (blank: no limit; the team's limits apply too)"))
        text = page(admin_client, url, language)
        assert label in text and title.replace("'", "&#x27;") in text, language
        seen.add(label)
    assert len(seen) == 5, "each language has its own words"


def test_request_log_says_price_unknown_rather_than_zero(admin_client):
    from proxy.models import ModelPrice
    from proxy.usage import logwriter

    key, _ = make_key()
    ModelPrice.objects.update_or_create(
        model="priced", defaults={"input_per_million": Decimal(1), "output_per_million": Decimal(1)}
    )
    for model in ("priced", "mystery"):
        record = TurnRecord(key_id=key.pk, client_transport="http", requested_model=model)
        record.outcome.model = model
        record.outcome.input_tokens, record.outcome.output_tokens = 1_000_000, 0
        logwriter.submit(record)
    rows = {r.requested_model: r for r in request_logs(2)}
    assert rows["priced"].cost == Decimal(1) and rows["mystery"].cost is None
    text = page(admin_client, reverse("admin:proxy_requestlog_changelist"))
    assert text.count("price unknown") == 1 and "$1.00" in text  # the one money format


def test_a_team_and_its_limits_saved_in_the_admin_reach_the_keys(admin_client):
    from proxy.governance.auth import _load
    from proxy.models import Team

    form = {
        "name": "ops",
        "enabled": "on",
        "rpm": "30",
        "tpm": "",
        "concurrency": "",
        "sockets": "2",
        "daily_budget": "1.50",
        "monthly_budget": "",
        "allowed_models": "gpt-5.5\n gpt-5-mini \n\ngpt-5.5",
        "_save": "Save",
    }
    response = admin_client.post(reverse("admin:proxy_team_add"), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    team = Team.objects.get(name="ops")
    assert (team.rpm, team.tpm, team.sockets, team.daily_budget) == (30, None, 2, Decimal("1.50"))
    assert team.allowed_models == ["gpt-5.5", "gpt-5-mini"]  # one per line, trimmed, once each
    key, _ = make_key(team=team)
    policy = _load()[key.hashed_key].policy
    assert [(q.scope, q.rpm, q.daily) for q in policy.quotas] == [(f"t{team.pk}", 30, 1_500_000)]
    listing = page(admin_client, reverse("admin:proxy_team_changelist"))
    assert "ops" in listing
    bad = admin_client.post(reverse("admin:proxy_team_add"), {**form, "name": "x", "allowed_models": "gpt 5"})
    assert bad.status_code == 200 and "is not a model name" in bad.content.decode()
    edit = page(admin_client, reverse("admin:proxy_team_change", args=[team.pk]))
    assert "\ngpt-5.5\ngpt-5-mini</textarea>" in edit, "the list is shown one name per line"
