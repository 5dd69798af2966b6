"""SCIM 2.0 against the served gateway: the scim2-tester compliance checker, the token, bad bodies, filters
and pagination, groups as teams, and deprovisioning that stops a key in the middle of a WebSocket session."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from identity.models import Membership, Role
from proxy.models import ApiKey, Team

TOKEN = "a-scim-token-for-tests"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
# Checks of scim2-tester that do not end in SUCCESS, each explained in docs/identity.md.
EXPLAINED = {"search_with_attributes"}


@pytest.fixture
def scim(gateway: Any, settings: Any) -> Any:
    settings.SLUICE_SCIM_TOKEN = TOKEN
    with httpx.Client(
        base_url=gateway.url + "/scim/v2", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20
    ) as client:
        yield client


def new_user(scim: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    body = {
        "schemas": [USER_SCHEMA],
        "userName": name,
        "emails": [{"value": f"{name}@example.com", "primary": True}],
    }
    answer = scim.post("/Users", json=body | fields)
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_compliance_checker_finds_no_error(scim, gateway):
    client = httpx2.Client(base_url=gateway.url + "/scim/v2/", headers={"Authorization": f"Bearer {TOKEN}"})
    with client:
        results = check_server(SyncSCIMClient(client))
    statuses = Counter(result.status for result in results)
    broken = [
        (r.title, r.resource_type, r.reason) for r in results if r.status in (Status.ERROR, Status.CRITICAL)
    ]
    assert not broken, "\n".join(map(str, broken))
    assert statuses[Status.SUCCESS] >= 20, statuses
    # Every result that is not a success is explained in docs/identity.md, by the check's name.
    others = {r.title for r in results if r.status != Status.SUCCESS}
    assert others <= EXPLAINED, others
    documented = (Path(settings.BASE_DIR) / "docs" / "identity.md").read_text()
    assert all(f"`{title}`" in documented for title in others)


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": f"Basic {TOKEN}"}, 401)],
)
def test_token_is_required(gateway, settings, headers, status):
    settings.SLUICE_SCIM_TOKEN = TOKEN
    answer = httpx.get(gateway.url + "/scim/v2/Users", headers=headers, timeout=20)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/scim+json"
    assert answer.json()["schemas"] == [ERROR_SCHEMA] and answer.json()["status"] == str(status)
    assert TOKEN not in answer.text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "scim_type"),
    [
        ("POST", "/Users", b"{not json", 400, "invalidSyntax"),
        ("POST", "/Users", b"[1, 2]", 400, "invalidSyntax"),
        ("POST", "/Users", b'{"schemas": ["' + USER_SCHEMA.encode() + b'"]}', 400, "invalidValue"),
        ("PATCH", "/Users/{id}", b'{"Operations": 3}', 400, "invalidValue"),
        ("PUT", "/Users/{id}", b'{"userName": 5', 400, "invalidSyntax"),
        ("GET", "/Users?filter=emails%20co%20%22x%22", b"", 400, "invalidFilter"),
        ("GET", "/Users/999999", b"", 404, None),
        ("GET", "/Users/99999999999999999999999", b"", 404, None),
        ("GET", "/Groups/99999999999999999999999", b"", 404, None),
        ("GET", "/Users?filter=userName%20eq%20%22%5Cx%22", b"", 400, "invalidFilter"),
        ("GET", "/Nothing", b"", 404, None),
    ],
)
def test_bad_requests_get_scim_errors(scim, method, path, body, status, scim_type):
    person = new_user(scim, "first")
    headers = {"Content-Type": "application/scim+json"}
    answer = scim.request(method, path.replace("{id}", person["id"]), content=body, headers=headers)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["schemas"] == [ERROR_SCHEMA] and error.get("scimType") == scim_type and error["detail"]


def test_filter_and_pagination(scim):
    get_user_model().objects.create_superuser("root", "root@example.com", "pw")  # made by hand: not SCIM's
    for n in range(5):
        new_user(scim, f"user{n}")
    assert scim.get("/Users", params={"filter": 'userName eq "root"'}).json()["totalResults"] == 0
    found = scim.get("/Users", params={"filter": 'userName eq "user3"'}).json()
    assert found["totalResults"] == 1 and found["Resources"][0]["userName"] == "user3"
    page = scim.get("/Users", params={"startIndex": 2, "count": 2}).json()
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (5, 2, 2)
    assert [r["userName"] for r in page["Resources"]] == ["user1", "user2"]


def test_groups_are_teams_and_set_memberships(scim):
    team = Team.objects.create(name="Platform", idp_groups=["eng"], lead_idp_groups=["eng-leads"])
    alice, bob = new_user(scim, "alice"), new_user(scim, "bob")
    pushed = scim.post(
        "/Groups",
        json={"schemas": [GROUP_SCHEMA], "displayName": "eng-leads", "members": [{"value": alice["id"]}]},
    )
    assert pushed.status_code == 201 and pushed.json()["id"] == str(team.pk)
    assert list(Membership.objects.values_list("user__username", "role", "source")) == [
        ("alice", Role.LEAD, "scim")
    ]
    patch = {
        "schemas": [PATCH_SCHEMA],
        "Operations": [
            {"op": "add", "path": "members", "value": [{"value": bob["id"]}]},
            {"op": "remove", "path": f'members[value eq "{alice["id"]}"]'},
        ],
    }
    assert scim.patch(f"/Groups/{team.pk}", json=patch).status_code == 200
    assert list(Membership.objects.values_list("user__username", flat=True)) == ["bob"]
    assert scim.get(f"/Users/{bob['id']}").json()["groups"][0]["display"] == "Platform"


@pytest.mark.parametrize("how", ["PATCH active false", "PUT active false", "DELETE"])
def test_deprovisioning_stops_keys(scim, how):
    person = new_user(scim, "leaver")
    user = get_user_model().objects.get(pk=person["id"])
    key = ApiKey(name="laptop", owner=user)
    key.generate()
    key.save()
    if how == "PATCH active false":
        body = {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": False}}]}
        assert scim.patch(f"/Users/{user.pk}", json=body).json()["active"] is False
    elif how == "PUT active false":
        body = {"schemas": [USER_SCHEMA], "userName": "leaver", "active": False}
        assert scim.put(f"/Users/{user.pk}", json=body).json()["active"] is False
    else:
        assert scim.delete(f"/Users/{user.pk}").status_code == 204
        assert not ApiKey.objects.filter(pk=key.pk).exists()
        return
    key.refresh_from_db()
    assert not key.enabled
    # Reactivating brings the person back, not their keys.
    body = {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "active", "value": True}]}
    assert scim.patch(f"/Users/{user.pk}", json=body).json()["active"] is True
    key.refresh_from_db()
    assert not key.enabled


def test_deactivation_closes_a_live_websocket_and_refuses_the_key(scim, gateway, upstream):
    import json

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from tests.conftest import make_key, make_provider

    make_provider(upstream)
    person = new_user(scim, "leaver")
    _key, raw = make_key("laptop", username="leaver")
    headers = {"authorization": f"Bearer {raw}"}
    assert httpx.get(gateway.url + "/v1/models", headers=headers, timeout=20).status_code == 200
    with connect(gateway.url.replace("http", "ws") + "/v1/responses", additional_headers=headers) as ws:
        body = {
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "replace", "path": "active", "value": False}],
        }
        assert scim.patch(f"/Users/{person['id']}", json=body).status_code == 200
        error = json.loads(ws.recv(timeout=5))
        assert error["type"] == "error" and error["status"] == 401
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1008
    assert httpx.get(gateway.url + "/v1/models", headers=headers, timeout=20).status_code == 401


@pytest.mark.parametrize(
    ("path", "attribute", "name_of"),
    [("/Users", "userName", "userName"), ("/Groups", "displayName", "displayName")],
    ids=["users", "groups"],
)
def test_users_and_groups_list_filter_and_page_alike(scim, path, attribute, name_of):
    """The two collections share one listing: the filter, the page, the attributes asked for, the errors."""
    for n in range(5):
        if path == "/Users":
            new_user(scim, f"name{n}")
        else:
            Team.objects.create(name=f"name{n}")
    page = scim.get(path, params={"startIndex": 2, "count": 2, "attributes": attribute}).json()
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (5, 2, 2)
    assert [r[name_of] for r in page["Resources"]] == ["name1", "name2"]
    assert all(set(r) <= {"id", "schemas", name_of} for r in page["Resources"]), page["Resources"]
    found = scim.get(path, params={"filter": f'{attribute} eq "name3"'}).json()
    assert found["totalResults"] == 1 and found["Resources"][0][name_of] == "name3"
    assert scim.get(path, params={"filter": f'{attribute} eq "nobody"'}).json()["totalResults"] == 0
    for params in ({"filter": 'title eq "x"'}, {"count": "many"}):
        refused = scim.get(path, params=params)
        assert refused.status_code == 400 and refused.json()["schemas"] == [ERROR_SCHEMA]
