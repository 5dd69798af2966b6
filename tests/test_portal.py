"""The developer portal: sign-in, keys within the team's policy, and nobody seeing or touching what is
someone else's."""

import datetime as dt
import re
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.db.models.signals import post_save
from django.test import Client
from django.utils import timezone

from audit.context import current
from identity.models import Membership, Role
from portal import ratelimit
from proxy.models import ApiKey, RequestLog, Team, hash_key

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-portal-password"


def person(name: str, *teams: tuple[Team, str]) -> Any:
    user = get_user_model().objects.create_user(name, f"{name}@example.test", PASSWORD)
    for team, role in teams:
        Membership.objects.create(user=user, team=team, role=role)
    return user


def key_of(user: Any, team: Team, name: str) -> ApiKey:
    key = ApiKey(name=name, owner=user, team=team, expires_at=timezone.now() + dt.timedelta(days=5))
    key.generate()
    key.save()
    return key


def row(key: ApiKey, owner: Any = None, **fields: Any) -> RequestLog:
    values = {"upstream_model": "gpt-5.5", "input_tokens": 10, "output_tokens": 5, "cost": Decimal("0.01")}
    return RequestLog.objects.create(api_key=key, team=key.team, owner=owner, **{**values, **fields})


@pytest.fixture
def world() -> dict[str, Any]:
    """Team A: alice and bob (members), carol (lead); team B: dave. Each member has a key and a turn."""
    a = Team.objects.create(name="alpha-team", allowed_models=["gpt-5.5", "gpt-5.5-mini"], rpm=100)
    b = Team.objects.create(name="beta-team")
    alice = person("alice", (a, Role.MEMBER))
    bob = person("bob", (a, Role.MEMBER))
    carol = person("carol", (a, Role.LEAD))
    dave = person("dave", (b, Role.MEMBER))
    keys = {
        "alice": key_of(alice, a, "alice-laptop"),
        "bob": key_of(bob, a, "bob-laptop"),
        "dave": key_of(dave, b, "dave-laptop"),
    }
    row(keys["alice"], alice, session_id="sess-alice", upstream_model="model-of-alice")
    row(keys["bob"], None, session_id="sess-bob", upstream_model="model-of-bob")  # owner not recorded
    row(keys["dave"], dave, session_id="sess-dave", upstream_model="model-of-dave")
    # Made by bob with a key that is alice's since: bob's turn, not alice's.
    row(keys["alice"], bob, upstream_model="bobs-model-before-handover")
    return {"a": a, "b": b, "alice": alice, "bob": bob, "carol": carol, "dave": dave, "keys": keys}


def signed_in(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def test_a_signed_out_visitor_is_sent_to_sign_in_and_a_password_signs_in(world, settings):
    client = Client()
    response = client.get("/portal/keys/")
    assert response.status_code == 302
    assert response["Location"] == "/portal/login/?next=/portal/keys/"
    page = client.get(response["Location"]).content.decode()
    assert "/auth/oidc/login/" not in page
    settings.SLUICE_OIDC_ISSUER = "https://id.example.test"
    page = client.get(response["Location"]).content.decode()
    assert 'href="/auth/oidc/login/?next=%2Fportal%2Fkeys%2F"' in page
    wrong = client.post("/portal/login/?next=/portal/keys/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200
    done = client.post("/portal/login/", {"username": "alice", "password": PASSWORD, "next": "/portal/keys/"})
    assert done.status_code == 302 and done["Location"] == "/portal/keys/"
    assert "alice-laptop" in client.get("/portal/keys/").content.decode()


GOOD = {"name": "new", "days": "", "models": ""}


@pytest.mark.parametrize(
    ("team_fields", "form", "message"),
    [
        ({}, {"days": "91"}, "A key of this team lives from 1 to 90 days."),
        ({"key_max_days": 7}, {"days": "8"}, "A key of this team lives from 1 to 7 days."),
        ({}, {"rpm": "101"}, "At most 100: the team&#x27;s own limit."),
        (
            {"daily_budget": Decimal("5.00")},
            {"daily_budget": "5.01"},
            "At most 5.00: the team&#x27;s own limit.",
        ),
        ({"concurrency": 2}, {"concurrency": "3"}, "At most 2: the team&#x27;s own limit."),
        ({}, {"models": "gpt-5.5, o4-deep"}, "Not allowed for the team: o4-deep."),
        ({"self_service": False}, {}, "does not let its members make their own keys."),
        (
            {"max_keys_per_user": 1},
            {},
            "You already have 1 working key in “alpha-team”, its most per person.",
        ),
        ({}, {"team": "beta"}, "Select a valid choice."),
    ],
    ids=[
        "days-default",
        "days-team",
        "rpm",
        "budget",
        "concurrency",
        "models",
        "no-self-service",
        "most-keys",
        "other-team",
    ],
)
def test_the_team_policy_refuses_a_wider_key_with_a_message(world, team_fields, form, message):
    Team.objects.filter(pk=world["a"].pk).update(**team_fields)
    fields = {**GOOD, "team": world["a"].pk, **form}
    if fields["team"] == "beta":
        fields["team"] = world["b"].pk
    before = ApiKey.objects.count()
    response = signed_in(world["alice"]).post("/portal/keys/", fields)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert ApiKey.objects.count() == before


@pytest.mark.parametrize(
    ("form", "expected_days"),
    [({}, 90), ({"days": "90", "rpm": "100", "models": "gpt-5.5-mini"}, 90), ({"days": "3"}, 3)],
    ids=["team-longest", "at-the-team-limits", "shorter"],
)
def test_a_key_within_the_policy_is_made_and_shown_once(world, form, expected_days, settings):
    settings.PUBLIC_URL = type(settings.PUBLIC_URL)("https", "sluice.example.test", "", "", "")
    response = signed_in(world["alice"]).post("/portal/keys/", {**GOOD, "team": world["a"].pk, **form})
    assert response.status_code == 200, response.content.decode()[:2000]
    assert response["Cache-Control"] == "no-store"
    page = response.content.decode()
    secret = re.search(r'id="secret" readonly value="(sk-sluice-[^"]+)"', page).group(1)
    key = ApiKey.objects.get(hashed_key=hash_key(secret))
    assert key.owner == world["alice"] and key.team == world["a"]
    assert secret not in str(list(ApiKey.objects.filter(pk=key.pk).values_list()))
    lifetime = key.expires_at - timezone.now()
    assert (
        dt.timedelta(days=expected_days) - dt.timedelta(minutes=1)
        < lifetime
        <= dt.timedelta(days=expected_days)
    )
    model = (form.get("models") or "gpt-5.5").split(",")[0]
    assert f"model = &quot;{model}&quot;" in page
    assert "base_url = &quot;https://sluice.example.test/v1&quot;" in page
    assert "supports_websockets = true" in page
    assert f"export SLUICE_API_KEY=&#x27;{secret}&#x27;" in page
    assert "openai.OpenAI(base_url=&quot;https://sluice.example.test/v1&quot;" in page
    assert secret not in signed_in(world["alice"]).get("/portal/keys/").content.decode()


def pages(world: dict[str, Any]) -> list[str]:
    return ["/portal/", "/portal/keys/", "/portal/usage/", "/portal/usage.csv"]


def test_a_person_sees_only_their_own_keys_and_rows(world):
    mine = {
        "alice": ("alice-laptop", "model-of-alice", "sess-alice"),
        "bob": ("bob-laptop", "model-of-bob", "sess-bob", "bobs-model-before-handover"),
        "dave": ("dave-laptop", "model-of-dave", "sess-dave"),
    }
    for name in mine:
        client = signed_in(world[name])
        seen = "".join(
            b"".join(client.get(url).streaming_content).decode()
            if url.endswith(".csv")
            else client.get(url).content.decode()
            for url in pages(world)
        )
        for other, theirs in mine.items():
            for thing in theirs:
                assert (thing in seen) == (other == name), f"{name} and {thing}"


@pytest.mark.parametrize("action", ["revoke", "rotate"])
@pytest.mark.parametrize("who", ["bob", "dave"])
def test_a_forged_post_with_someone_elses_key_id_is_not_found(world, action, who):
    target = world["keys"]["alice"]
    response = signed_in(world[who]).post(f"/portal/keys/{target.pk}/{action}/", {"grace_hours": "1"})
    assert response.status_code == 404
    target.refresh_from_db()
    assert target.enabled and target.expires_at > timezone.now() + dt.timedelta(days=4)
    assert ApiKey.objects.count() == 3


def test_a_lead_sees_and_revokes_their_teams_keys_and_never_another_teams(world):
    lead = signed_in(world["carol"])
    page = lead.get(f"/portal/teams/{world['a'].pk}/").content.decode()
    assert "alice-laptop" in page and "bob-laptop" in page and "dave-laptop" not in page
    assert "model-of-alice" in page and "model-of-bob" in page
    assert lead.get(f"/portal/teams/{world['b'].pk}/").status_code == 404
    assert signed_in(world["alice"]).get(f"/portal/teams/{world['a'].pk}/").status_code == 404
    assert lead.post(f"/portal/keys/{world['keys']['dave'].pk}/revoke/").status_code == 404
    assert (
        lead.post(f"/portal/keys/{world['keys']['bob'].pk}/rotate/", {"grace_hours": "1"}).status_code == 404
    )
    done = lead.post(
        f"/portal/keys/{world['keys']['bob'].pk}/revoke/", {"back": f"/portal/teams/{world['a'].pk}/"}
    )
    assert done.status_code == 302 and done["Location"] == f"/portal/teams/{world['a'].pk}/"
    assert not ApiKey.objects.get(pk=world["keys"]["bob"].pk).enabled
    assert ApiKey.objects.get(pk=world["keys"]["dave"].pk).enabled


def test_every_form_needs_the_csrf_token(world):
    client = signed_in(world["alice"], enforce_csrf_checks=True)
    key = world["keys"]["alice"].pk
    for url, data in [
        ("/portal/keys/", {**GOOD, "team": world["a"].pk}),
        (f"/portal/keys/{key}/revoke/", {}),
        (f"/portal/keys/{key}/rotate/", {"grace_hours": "1"}),
        ("/portal/logout/", {}),
    ]:
        assert client.post(url, data).status_code == 403, url
    assert ApiKey.objects.count() == 3 and ApiKey.objects.get(pk=key).enabled


def test_key_creation_and_rotation_are_rate_limited_per_person(world):
    alice, bob = signed_in(world["alice"]), signed_in(world["bob"])
    for _ in range(ratelimit.KEY_CHANGES - 1):
        assert alice.post("/portal/keys/", {**GOOD, "team": world["a"].pk}).status_code == 200
    rotate = f"/portal/keys/{world['keys']['alice'].pk}/rotate/"
    assert b"Your new key" in alice.post(rotate, {"grace_hours": "1"}).content
    refused = alice.post("/portal/keys/", {**GOOD, "team": world["a"].pk})
    assert refused.status_code == 429 and "too many keys" in refused.content.decode()
    assert bob.post("/portal/keys/", {**GOOD, "team": world["a"].pk}).status_code == 200


@pytest.mark.parametrize(("grace", "old_enabled"), [("0", False), ("6", True), ("24", True)])
def test_rotation_makes_a_new_key_and_keeps_the_old_one_for_the_grace_only(world, grace, old_enabled):
    old = world["keys"]["alice"]
    response = signed_in(world["alice"]).post(f"/portal/keys/{old.pk}/rotate/", {"grace_hours": grace})
    assert response.status_code == 200
    secret = re.search(r'value="(sk-sluice-[^"]+)"', response.content.decode()).group(1)
    new = ApiKey.objects.get(hashed_key=hash_key(secret))
    assert (new.name, new.team, new.owner, new.enabled) == (old.name, old.team, old.owner, True)
    old.refresh_from_db()
    assert old.enabled is old_enabled
    if old_enabled:
        expected = timezone.now() + dt.timedelta(hours=int(grace))
        assert abs((old.expires_at - expected).total_seconds()) < 60


def test_rotation_refuses_more_than_a_day_of_grace(world):
    old = world["keys"]["alice"]
    response = signed_in(world["alice"]).post(f"/portal/keys/{old.pk}/rotate/", {"grace_hours": "25"})
    assert response.status_code == 302 and ApiKey.objects.count() == 3


def test_a_deactivated_persons_session_ends_at_once(world):
    client = signed_in(world["alice"])
    assert client.get("/portal/keys/").status_code == 200
    get_user_model().objects.filter(pk=world["alice"].pk).update(is_active=False)
    response = client.get("/portal/keys/")
    assert response.status_code == 302 and response["Location"].startswith("/portal/login/")
    assert client.post(f"/portal/keys/{world['keys']['alice'].pk}/revoke/").status_code == 302
    assert ApiKey.objects.get(pk=world["keys"]["alice"].pk).enabled


def test_the_csv_holds_own_rows_with_formulas_neutralised(world):
    row(world["keys"]["alice"], world["alice"], session_id="=HYPERLINK(1)", requested_model="@evil")
    body = b"".join(signed_in(world["alice"]).get("/portal/usage.csv").streaming_content).decode()
    lines = body.strip().splitlines()
    assert len(lines) == 3
    assert "'=HYPERLINK(1)" in body and "'@evil" in body
    assert ",=" not in body and ",@" not in body


def test_sessions_group_the_turns_of_a_codex_session(world):
    key, alice = world["keys"]["alice"], world["alice"]
    row(key, alice, session_id="sess-alice", client_transport="websocket", cost=Decimal("0.02"))
    page = signed_in(alice).get("/portal/usage/").content.decode()
    sessions = page[page.index('id="sessions"') :]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", sessions.split("</tr>")[1])
    assert cells[2:] == ["2", "30", "$0.03", "both"]


def test_portal_changes_are_recorded_as_the_persons(world):
    seen = []

    def record(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
        seen.append(current())

    post_save.connect(record, sender=ApiKey, dispatch_uid="portal-test-actor")
    try:
        signed_in(world["alice"]).post(
            f"/portal/keys/{world['keys']['alice'].pk}/revoke/", REMOTE_ADDR="10.1.2.3"
        )
    finally:
        post_save.disconnect(dispatch_uid="portal-test-actor", sender=ApiKey)
    assert [(a.name, a.source, a.user_id, a.client_ip) for a in seen] == [
        ("alice", "portal", world["alice"].pk, "10.1.2.3")
    ]


def test_createteam_sets_the_portal_policy(world):
    call_command(
        "createteam",
        "--name",
        "gamma",
        "--no-self-service",
        "--max-keys-per-user",
        "3",
        "--key-max-days",
        "14",
    )
    team = Team.objects.get(name="gamma")
    assert (team.self_service, team.max_keys_per_user, team.key_max_days) == (False, 3, 14)
    call_command("createteam", "--name", "gamma", "--self-service")
    team.refresh_from_db()
    assert (team.self_service, team.max_keys_per_user, team.key_max_days) == (True, 3, 14)


def test_a_key_lifetime_of_0_days_is_refused_by_createteam(world):
    """Portal keys always expire: 0 days is no lifetime (and not "no maximum"), so it is refused, as the
    admin and the database refuse it; a team's lifetime is unchanged by the refused run."""
    with pytest.raises(CommandError, match="--key-max-days"):
        call_command("createteam", "--name", "gamma", "--key-max-days", "0", stdout=StringIO())
    assert not Team.objects.filter(name="gamma").exists()
    call_command("createteam", "--name", "gamma", "--key-max-days", "14", stdout=StringIO())
    with pytest.raises(CommandError, match="--key-max-days"):
        call_command("createteam", "--name", "gamma", "--key-max-days", "0", stdout=StringIO())
    assert Team.objects.get(name="gamma").key_max_days == 14
    call_command("createteam", "--name", "gamma", "--key-max-days", "1", stdout=StringIO())
    assert Team.objects.get(name="gamma").key_max_days == 1


def test_a_key_lifetime_of_0_days_is_refused_by_the_admin(world, admin_client):
    form = {"name": "gamma", "enabled": "on", "allowed_models": "", "key_max_days": "0", "_save": "Save"}
    response = admin_client.post("/admin/proxy/team/add/", form)
    assert response.status_code == 200
    assert "Ensure this value is greater than or equal to 1." in response.content.decode()
    assert not Team.objects.filter(name="gamma").exists()
    assert admin_client.post("/admin/proxy/team/add/", {**form, "key_max_days": ""}).status_code == 302
    assert Team.objects.get(name="gamma").key_max_days is None


def test_the_portal_never_meets_a_key_lifetime_of_0_days_and_shows_the_one_it_enforces(world):
    """Nothing writes a 0 past the database (the portal read it as 90 days); the teams page shows the
    lifetime the key form enforces: the team's, or 90 days when it sets none."""
    with pytest.raises(IntegrityError), transaction.atomic():
        Team.objects.filter(pk=world["a"].pk).update(key_max_days=0)
    Team.objects.filter(pk=world["b"].pk).update(key_max_days=7)
    page = signed_in(world["alice"]).get("/portal/").content.decode()
    assert re.search(r"Longest key lifetime</dt><dd>90 days</dd>", page)
    page = signed_in(world["dave"]).get("/portal/").content.decode()
    assert re.search(r"Longest key lifetime</dt><dd>7 days</dd>", page)
