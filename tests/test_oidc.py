"""Sign-in with an OpenID provider against the served gateway: the real flow with panva's oidc-provider
(login and consent forms posted with httpx), and every bad answer a provider or an attacker can give."""

from __future__ import annotations

import base64
import json
import logging
import shutil
from collections.abc import Iterator
from html import escape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.utils import translation

from identity import oidc, signin
from identity.models import Membership, OidcSubject, Role
from identity.views import NO_FLOW
from proxy.models import Team
from tests.conftest import free_port, require
from tests.oidcsupport import CLIENT_ID, CLIENT_SECRET, FakeIssuer, NodeProvider, provider_sign_in, rsa_key

USERS = {
    "alice": {
        "email": "alice@example.test",
        "given_name": "Alice",
        "family_name": "Liddell",
        "preferred_username": "alice",
        "groups": ["eng", "eng-leads", "unmapped"],
    },
    "root": {"email": "root@example.test", "preferred_username": "root", "groups": ["sluice-admins"]},
    "mallory": {"email": "m@example.test", "preferred_username": "mallory", "groups": ["marketing"]},
}


def configure(settings: Any, issuer: str) -> None:
    settings.SLUICE_OIDC_ISSUER = issuer
    settings.SLUICE_OIDC_CLIENT_ID = CLIENT_ID
    settings.SLUICE_OIDC_CLIENT_SECRET = CLIENT_SECRET
    settings.SLUICE_OIDC_NAME = "TestIdP"
    settings.SLUICE_OIDC_ADMIN_GROUPS = ["sluice-admins"]
    settings.SLUICE_OIDC_TIMEOUT = 3.0
    oidc.forget()


@pytest.fixture
def node_provider(gateway: Any, settings: Any) -> Iterator[NodeProvider]:
    require(shutil.which("node") is not None, "node is not installed")
    with NodeProvider(gateway.url + "/auth/oidc/callback/", USERS, gateway.url + "/admin/login/") as provider:
        configure(settings, provider.issuer)
        yield provider
    oidc.forget()


@pytest.fixture
def fake_issuer(gateway: Any, settings: Any) -> Iterator[FakeIssuer]:
    with FakeIssuer() as fake:
        configure(settings, fake.issuer)
        yield fake
    oidc.forget()


def on_page(message: Any, page: httpx.Response) -> bool:
    return escape(str(message)) in page.text


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sluice.identity" and "sign-in refused" in r.getMessage()]


def test_full_sign_in_sets_user_teams_and_roles(node_provider, gateway):
    platform = Team.objects.create(name="Platform", idp_groups=["eng"], lead_idp_groups=["eng-leads"])
    other = Team.objects.create(name="Other", idp_groups=["ops"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        page = provider_sign_in(client, "/auth/oidc/login/?next=/admin/", "alice")
        # Not staff: /admin/ is not for her, so she lands on the portal instead of the admin's refusal.
        assert [urlsplit(str(r.url)).path for r in page.history][-1] == "/auth/oidc/callback/"
        assert urlsplit(str(page.url)).path == "/portal/"
    user = get_user_model().objects.get(
        oidc_subject__subject="alice", oidc_subject__issuer=node_provider.issuer
    )
    assert (user.email, user.first_name, user.last_name) == ("alice@example.test", "Alice", "Liddell")
    assert not user.is_staff and not user.is_superuser and not user.has_usable_password()
    assert list(Membership.objects.filter(user=user).values_list("team__name", "role", "source")) == [
        ("Platform", Role.LEAD, "oidc")
    ]
    # Her group no longer maps to Platform (as if she left it), and another one does: at the next sign-in
    # she leaves the first team and joins the second.
    Team.objects.filter(pk=platform.pk).update(idp_groups=["gone"], lead_idp_groups=[])
    Team.objects.filter(pk=other.pk).update(idp_groups=["unmapped"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        provider_sign_in(client, "/auth/oidc/login/", "alice")
    assert list(Membership.objects.filter(user=user).values_list("team__name", "role")) == [
        ("Other", Role.MEMBER)
    ]
    assert get_user_model().objects.filter(email="alice@example.test").count() == 1


def test_admin_group_lands_in_the_admin_and_signs_out_at_the_provider(node_provider, gateway):
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        page = provider_sign_in(client, "/auth/oidc/login/?next=/admin/", "root")
        assert page.status_code == 200 and urlsplit(str(page.url)).path == "/admin/"
        assert "Site administration" in page.text
        out = client.post(
            "/admin/logout/", headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": gateway.url}
        )
        assert out.status_code == 302
        end = urlsplit(out.headers["location"])
        assert f"{end.scheme}://{end.netloc}" == node_provider.issuer and "id_token_hint" in end.query
        assert client.get("/admin/").status_code == 302  # the session is gone
    assert get_user_model().objects.get(username="root").is_superuser


def test_user_in_no_mapped_group_gets_a_translated_page(node_provider, gateway, caplog):
    Team.objects.create(name="Platform", idp_groups=["eng"])
    with httpx.Client(base_url=gateway.url, timeout=20, headers={"Accept-Language": "ja"}) as client:
        page = provider_sign_in(client, "/auth/oidc/login/", "mallory")
    assert page.status_code == 403
    with translation.override("ja"):
        expected = str(signin.NO_TEAM)
    assert expected != str(signin.NO_TEAM) and escape(expected) in page.text
    assert len(refusals(caplog)) == 1
    assert Membership.objects.count() == 0


@pytest.mark.parametrize("trick", ["forged code", "replayed code", "wrong state"])
def test_forged_codes_and_states_are_refused(node_provider, gateway, caplog, trick):
    Team.objects.create(name="Platform", idp_groups=["eng"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        start = client.get("/auth/oidc/login/")
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        page = client.get(start.headers["location"], follow_redirects=True)
        action = page.text.split('action="')[1].split('"')[0]
        # Stop at the callback to keep the code: its redirect is followed by hand.
        answer = client.post(
            httpx.URL(str(page.url)).join(action), data={"prompt": "login", "login": "alice", "password": "x"}
        )
        while "/auth/oidc/callback/" not in answer.headers.get("location", ""):
            location = httpx.URL(str(answer.url)).join(answer.headers["location"])
            answer = client.get(location)
            if 'value="consent"' in answer.text:
                answer = client.post(
                    location.join(answer.text.split('action="')[1].split('"')[0]), data={"prompt": "consent"}
                )
        callback = answer.headers["location"]
        query = parse_qs(urlsplit(callback).query)
        code = query["code"][0]
        if trick == "forged code":
            page = client.get("/auth/oidc/callback/", params={"state": state, "code": code[:-4] + "AAAA"})
            expected = oidc.REFUSED_CODE
        elif trick == "wrong state":
            page = client.get("/auth/oidc/callback/", params={"state": "not-" + state, "code": code})
            expected = NO_FLOW
        else:
            assert client.get(callback).status_code == 302  # the first use signs in
            page = client.get(callback)
            expected = NO_FLOW
    assert page.status_code == 403
    assert on_page(expected, page)
    assert len(refusals(caplog)) == 1


def start(client: httpx.Client) -> tuple[str, str]:
    """Begin a sign-in; the state and nonce Sluice sent the provider."""
    answer = client.get("/auth/oidc/login/")
    assert answer.status_code == 302
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    return query["state"][0], query["nonce"][0]


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def token_for(fake: FakeIssuer, nonce: str, case: str) -> str:
    if case == "wrong aud":
        return fake.sign(fake.claims(nonce, aud="someone-else"))
    if case == "expired":
        return fake.sign(fake.claims(nonce, iat=1_700_000_000, exp=1_700_000_300))
    if case == "nonce mismatch":
        return fake.sign(fake.claims("another-nonce"))
    if case == "wrong issuer":
        return fake.sign(fake.claims(nonce, iss="http://127.0.0.1:1"))
    if case == "issued in the future":
        return fake.sign(fake.claims(nonce, iat=2_000_000_000, exp=2_000_000_300))
    if case == "unknown kid":
        return fake.sign(fake.claims(nonce), key=rsa_key("stranger"))
    if case == "alg none":
        return b64({"alg": "none", "typ": "JWT"}) + "." + b64(fake.claims(nonce)) + "."
    if case == "bad signature":
        token = fake.sign(fake.claims(nonce))
        return token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "wrong aud",
        "expired",
        "nonce mismatch",
        "wrong issuer",
        "issued in the future",
        "unknown kid",
        "alg none",
        "bad signature",
    ],
)
def test_bad_id_tokens_are_refused(fake_issuer, gateway, caplog, case):
    Team.objects.create(name="Platform", idp_groups=["eng"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        state, nonce = start(client)
        fake_issuer.token_answer = (
            200,
            {"id_token": token_for(fake_issuer, nonce, case), "token_type": "Bearer"},
        )
        page = client.get("/auth/oidc/callback/", params={"state": state, "code": "a-code"})
    assert page.status_code == 403, page.text[:300]
    assert on_page(oidc.BAD_TOKEN, page)
    assert len(refusals(caplog)) == 1
    assert not OidcSubject.objects.exists()


def test_an_answer_from_another_issuer_is_refused(fake_issuer, gateway, caplog):
    """RFC 9207: a callback naming another issuer (a mix-up attack) is refused before the code is used."""
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        state, nonce = start(client)
        fake_issuer.token_answer = (200, {"id_token": fake_issuer.sign(fake_issuer.claims(nonce))})
        page = client.get(
            "/auth/oidc/callback/", params={"state": state, "code": "c", "iss": "https://evil.example"}
        )
    assert page.status_code == 403 and on_page(oidc.REFUSED_CODE, page)
    assert fake_issuer.token_forms == [] and len(refusals(caplog)) == 1


def test_a_new_signing_key_is_fetched_once(fake_issuer, gateway):
    Team.objects.create(name="Platform", idp_groups=["eng"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        state, nonce = start(client)
        fake_issuer.token_answer = (200, {"id_token": fake_issuer.sign(fake_issuer.claims(nonce))})
        assert client.get("/auth/oidc/callback/", params={"state": state, "code": "c"}).status_code == 302
        # The provider rotates its key: the token names a key id Sluice has not seen, and is accepted after
        # one fetch of the key set.
        new = rsa_key("fake-2")
        fake_issuer.keys.append(new)
        oidc._cache.entries = {  # the cached key set is older than the refresh interval
            url: (at - oidc.JWKS_REFRESH_INTERVAL, value) for url, (at, value) in oidc._cache.entries.items()
        }
        fetches = fake_issuer.jwks_fetches
        state, nonce = start(client)
        fake_issuer.token_answer = (200, {"id_token": fake_issuer.sign(fake_issuer.claims(nonce), key=new)})
        assert client.get("/auth/oidc/callback/", params={"state": state, "code": "c"}).status_code == 302
    assert fake_issuer.jwks_fetches == fetches + 1
    # The PKCE verifier went to the token endpoint, and it matches the challenge of the flow.
    assert all(len(form["code_verifier"]) >= 43 for form in fake_issuer.token_forms)


@pytest.mark.parametrize(
    ("groups", "expected", "status"),
    [
        (None, signin.NO_TEAM, 403),
        ("eng", signin.BAD_GROUPS, 403),
        ([f"group-{n}" for n in range(5000)], signin.BAD_GROUPS, 403),
        ([{"name": "eng"}], signin.BAD_GROUPS, 403),
    ],
    ids=["missing", "string", "huge", "objects"],
)
def test_odd_groups_claims_are_refused(fake_issuer, gateway, caplog, groups, expected, status):
    Team.objects.create(name="Platform", idp_groups=["eng"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        state, nonce = start(client)
        claims = fake_issuer.claims(nonce, groups=groups)
        fake_issuer.token_answer = (200, {"id_token": fake_issuer.sign(claims)})
        page = client.get("/auth/oidc/callback/", params={"state": state, "code": "c"})
    assert page.status_code == status
    assert on_page(expected, page)
    assert len(refusals(caplog)) == 1
    assert not Membership.objects.exists()


def test_provider_answering_500_or_unreachable(fake_issuer, gateway, settings, caplog):
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        state, _nonce = start(client)
        fake_issuer.token_answer = (500, {"error": "server_error"})
        page = client.get("/auth/oidc/callback/", params={"state": state, "code": "c"})
        assert page.status_code == 502 and on_page(oidc.UNREACHABLE, page)
        settings.SLUICE_OIDC_ISSUER = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        oidc.forget()
        page = client.get("/auth/oidc/login/")
        assert page.status_code == 502 and on_page(oidc.UNREACHABLE, page)
    assert len(refusals(caplog)) == 2


def test_next_stays_within_the_site(fake_issuer, gateway):
    Team.objects.create(name="Platform", idp_groups=["eng"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for target, landing in [
            ("https://evil.example/", "/portal/"),
            ("//evil.example/x", "/portal/"),
            ("/v1/models", "/v1/models"),
        ]:
            answer = client.get("/auth/oidc/login/", params={"next": target})
            query = parse_qs(urlsplit(answer.headers["location"]).query)
            fake_issuer.token_answer = (
                200,
                {"id_token": fake_issuer.sign(fake_issuer.claims(query["nonce"][0]))},
            )
            done = client.get("/auth/oidc/callback/", params={"state": query["state"][0], "code": "c"})
            assert done.status_code == 302 and done.headers["location"] == landing


def test_sign_in_off_without_configuration(gateway, settings):
    settings.SLUICE_OIDC_ISSUER = ""
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        assert client.get("/auth/oidc/login/").status_code == 404
        assert "sluice-sso-button" not in client.get("/admin/login/").text


def sign_in_with(client: httpx.Client, fake: FakeIssuer, **claims: Any) -> httpx.Response:
    state, nonce = start(client)
    fake.token_answer = (200, {"id_token": fake.sign(fake.claims(nonce, **claims))})
    return client.get("/auth/oidc/callback/", params={"state": state, "code": "c"})


@pytest.mark.parametrize("link", ["sub", "oid"])
def test_a_person_provisioned_by_scim_is_linked_at_first_sign_in(fake_issuer, gateway, settings, link):
    Team.objects.create(name="Platform", idp_groups=["eng"])
    settings.SLUICE_SCIM_TOKEN = "scim-token"
    body = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "pat",
        "externalId": "ext-7",
    }
    made = httpx.post(
        gateway.url + "/scim/v2/Users", json=body, headers={"Authorization": "Bearer scim-token"}, timeout=20
    )
    assert made.status_code == 201
    claims = {"sub": "ext-7"} if link == "sub" else {"sub": "pairwise-subject", "oid": "ext-7"}
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        assert sign_in_with(client, fake_issuer, **claims).status_code == 302
    assert get_user_model().objects.count() == 1
    assert OidcSubject.objects.get().user.username == "pat"


def test_staff_groups_give_the_admin_with_the_chosen_permissions_and_take_it_back(
    fake_issuer, gateway, settings
):
    settings.SLUICE_OIDC_STAFF_GROUPS = ["helpdesk"]
    settings.SLUICE_OIDC_STAFF_PERMISSION_GROUP = "Helpdesk permissions"
    Team.objects.create(name="Platform", idp_groups=["eng"])
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        answer = sign_in_with(client, fake_issuer, groups=["helpdesk"])
        assert answer.status_code == 302 and answer.headers["location"] == "/admin/"
        user = get_user_model().objects.get()
        assert user.is_staff and not user.is_superuser
        assert list(user.groups.values_list("name", flat=True)) == ["Helpdesk permissions"]
        # Out of the staff group, still in a team: a member, no longer staff.
        answer = sign_in_with(client, fake_issuer, groups=["eng"])
        assert answer.status_code == 302 and answer.headers["location"] == "/portal/"
    user.refresh_from_db()
    assert not user.is_staff and not user.groups.exists()


def test_deactivating_in_the_admin_disables_the_keys(gateway, transactional_db):
    import re

    from django.test import Client

    from proxy.models import ApiKey
    from tests.conftest import make_key

    key, _raw = make_key("laptop", username="leaver")
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    session = Client()
    session.force_login(admin)
    with httpx.Client(
        base_url=gateway.url, cookies={"sessionid": session.cookies["sessionid"].value}
    ) as browser:
        url = f"/admin/auth/user/{key.owner_id}/change/"
        page = browser.get(url)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        form = {"csrfmiddlewaretoken": token, "username": "leaver", "date_joined_0": "2026-01-01"}
        form |= {"date_joined_1": "00:00:00", "initial-date_joined_0": "2026-01-01"}
        # The page's inline lists the person's keys: its management form goes back as the page has it.
        hidden = r'<input type="hidden" name="([^"]+-(?:[A-Z_]+FORMS|\d+-\w+))"[^>]*?value="([^"]*)"'
        for name, value in re.findall(hidden, page.text):
            form[name] = value
        saved = browser.post(url, data=form, headers={"referer": gateway.url + url})  # "active" unticked
        assert saved.status_code == 302, saved.text[:300]
    assert not get_user_model().objects.get(pk=key.owner_id).is_active
    assert not ApiKey.objects.get(pk=key.pk).enabled


def test_changes_are_made_as_the_signing_in_person_and_as_scim(fake_issuer, gateway, settings):
    """The audit log reads the actor from audit.context in model signals: watch them the same way."""
    from django.db.models.signals import post_save

    from audit.context import Source, current

    seen: list[tuple[str, str, str]] = []

    def record(sender: Any, instance: Any, **kwargs: Any) -> None:
        seen.append((sender.__name__, current().source, current().name))

    post_save.connect(record, sender=Membership, weak=False, dispatch_uid="test-actor-membership")
    post_save.connect(record, sender=get_user_model(), weak=False, dispatch_uid="test-actor-user")
    try:
        Team.objects.create(name="Platform", idp_groups=["eng"])
        seen.clear()
        with httpx.Client(base_url=gateway.url, timeout=20) as client:
            assert sign_in_with(client, fake_issuer, preferred_username="pat").status_code == 302
        settings.SLUICE_SCIM_TOKEN = "scim-token"
        body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "sam"}
        headers = {"Authorization": "Bearer scim-token"}
        assert (
            httpx.post(gateway.url + "/scim/v2/Users", json=body, headers=headers, timeout=20).status_code
            == 201
        )
    finally:
        post_save.disconnect(sender=Membership, dispatch_uid="test-actor-membership")
        post_save.disconnect(sender=get_user_model(), dispatch_uid="test-actor-user")
    assert ("Membership", Source.SIGN_IN, "pat") in seen
    assert ("User", Source.SIGN_IN, "pat") in seen
    assert ("User", Source.SCIM, "scim") in seen
    assert {source for _kind, source, _name in seen} == {Source.SIGN_IN, Source.SCIM}, seen
