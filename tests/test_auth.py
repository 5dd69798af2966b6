"""Which key a client presents, and whether it admits the client: the pure part of authentication."""

import asyncio
import datetime as dt

import pytest
from django.utils import timezone

from proxy.governance.auth import authenticate, presented_key
from tests.conftest import make_key

KEY = "sk-sluice-abc"


@pytest.mark.parametrize(
    ("headers", "subprotocols", "key"),
    [
        ({"authorization": f"Bearer {KEY}"}, (), KEY),
        ({"authorization": f"bEaReR   {KEY}  "}, (), KEY),
        ({"authorization": "Bearer    ", "x-api-key": f" {KEY} "}, (), KEY),
        ({"authorization": f"Basic {KEY}"}, (), None),
        ({"authorization": f"Bearer {KEY}", "x-api-key": "other"}, (), KEY),
        ({"authorization": "Bearer k", "x-api-key": KEY}, (), "k"),
        ({}, ("realtime", f"openai-insecure-api-key.{KEY}"), KEY),
        ({"x-api-key": KEY}, ("openai-insecure-api-key.other",), KEY),
        ({}, ("realtime", f"insecure-api-key.{KEY}"), None),
        ({"x-api-key": ""}, (), None),
        ({}, (), None),
    ],
    ids=[
        "bearer",
        "bearer-any-case-and-spaces",
        "empty-bearer-then-x-api-key",
        "not-bearer",
        "bearer-before-x-api-key",
        "one-character-bearer",
        "subprotocol",
        "header-before-subprotocol",
        "other-subprotocol",
        "empty-x-api-key",
        "nothing",
    ],
)
def test_the_key_a_client_presents(headers, subprotocols, key):
    assert presented_key(headers, subprotocols) == key


@pytest.mark.django_db(transaction=True)
def test_a_key_admits_its_client_until_it_expires_or_is_disabled():
    from proxy.models import Team

    team = Team.objects.create(name="research", rpm=30)
    key, raw = make_key(expires_at=timezone.now() + dt.timedelta(hours=1), team=team, rpm=10)
    client = asyncio.run(authenticate(raw))
    assert client is not None and (client.key_id, client.key_name, client.owner_id, client.team_id) == (
        key.pk,
        key.name,
        key.owner_id,
        team.pk,
    )
    assert client.policy is not None
    assert [(q.scope, q.rpm) for q in client.policy.quotas] == [(f"k{key.pk}", 10), (f"t{team.pk}", 30)]
    assert asyncio.run(authenticate(raw + "x")) is None
    assert asyncio.run(authenticate("")) is None and asyncio.run(authenticate(None)) is None
    key.expires_at = timezone.now()  # expired at this very instant: no longer admitted
    key.save()
    assert asyncio.run(authenticate(raw)) is None
    key.expires_at = None
    key.enabled = False
    key.save()
    assert asyncio.run(authenticate(raw)) is None
