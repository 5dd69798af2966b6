"""A stored response belongs to whoever made it: another team's key (or any key, for an id the gateway
never issued) is told it does not exist, on every endpoint and both transports, without reaching the
upstream. Within a team, the operator may share them (SLUICE_RESPONSE_SHARING=team)."""

import json

import httpx
import openai
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import make_key, make_provider, request_logs, sdk, sdk_turn
from tests.helpers import make_team, open_socket, slow


def two_teams() -> tuple[tuple, tuple]:
    a = make_key(name="a-key", username="alice", team=make_team("team-a"))
    b = make_key(name="b-key", username="bob", team=make_team("team-b"))
    return a, b


def get(gateway, raw: str, method: str, path: str) -> httpx.Response:
    return httpx.request(
        method, gateway.url + "/v1" + path, headers={"authorization": f"Bearer {raw}"}, timeout=20
    )


NEVER_MADE = "resp_" + "0" * 24


def upstream_unknown(upstream, rid: str) -> dict:
    """What the upstream itself answers for a response id it does not know, naming ``rid``."""
    answer = httpx.get(
        upstream.url(f"/v1/responses/{NEVER_MADE}"), headers={"authorization": f"Bearer {upstream.api_key}"}
    )
    assert answer.status_code == 404
    return json.loads(answer.text.replace(NEVER_MADE, rid))


def reached(upstream, rid: str) -> int:
    return sum(1 for r in upstream.requests if rid in r.path)


def test_another_teams_key_finds_nothing_on_any_endpoint(gateway, upstream):
    make_provider(upstream)
    (_, raw_a), (_, raw_b) = two_teams()
    made = sdk(gateway, raw_a).responses.create(model="gpt-5.5", input="secret plans")
    rid = made.id
    expected = upstream_unknown(upstream, rid)
    before = reached(upstream, rid)
    for method, suffix in (("GET", ""), ("GET", "/input_items"), ("POST", "/cancel"), ("DELETE", "")):
        answer = get(gateway, raw_b, method, f"/responses/{rid}{suffix}")
        assert answer.status_code == 404, (method, suffix, answer.text)
        assert answer.json() == expected, "the upstream's own body for an unknown id"
        assert "secret" not in answer.text
    assert reached(upstream, rid) == before, "refused by the gateway, never asked upstream"
    b = sdk(gateway, raw_b)
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(rid)
    with pytest.raises(openai.NotFoundError):
        b.responses.delete(rid)
    # The owner still has it all.
    a = sdk(gateway, raw_a)
    assert a.responses.retrieve(rid).id == rid
    assert "secret plans" in json.dumps(a.responses.input_items.list(rid).model_dump())
    a.responses.delete(rid)
    assert upstream.stored(rid) is None


def test_previous_response_id_of_another_team_is_not_found_over_http(gateway, upstream):
    make_provider(upstream)
    (_, raw_a), (_, raw_b) = two_teams()
    rid = sdk(gateway, raw_a).responses.create(model="gpt-5.5", input="mine").id
    sent = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(gateway, raw_b).responses.create(model="gpt-5.5", input="yours?", previous_response_id=rid)
    error = refused.value.body
    assert (error["code"], error["param"]) == ("previous_response_not_found", "previous_response_id")
    assert error["message"] == f"Previous response with id '{rid}' not found."
    for streamed in (True, False):
        answer = httpx.post(
            gateway.url + "/v1/responses/input_tokens" if not streamed else gateway.url + "/v1/responses",
            json={"model": "gpt-5.5", "input": "x", "previous_response_id": rid, "stream": streamed},
            headers={"authorization": f"Bearer {raw_b}"},
        )
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "previous_response_not_found"
    assert len(upstream.requests) == sent
    follow = sdk(gateway, raw_a).responses.create(model="gpt-5.5", input="more", previous_response_id=rid)
    assert follow.status == "completed"


def test_ids_never_issued_here_are_refused_without_the_upstream(gateway, upstream):
    make_provider(upstream)
    _, raw = make_key()
    # The upstream knows this one (made with its own key, not through the gateway).
    direct = httpx.post(
        upstream.url("/v1/responses"),
        json={"model": "gpt-5.5", "input": "elsewhere"},
        headers={"authorization": f"Bearer {upstream.api_key}"},
    ).json()["id"]
    sent = len(upstream.requests)
    for rid in (direct, "resp_0123456789abcdef"):
        answer = get(gateway, raw, "GET", f"/responses/{rid}")
        assert answer.status_code == 404 and answer.json() == upstream_unknown(upstream, rid)
    assert len(upstream.requests) == sent + 2, "only this test's own two direct look-ups"


def test_over_websocket_another_teams_previous_response_is_not_found(gateway, upstream):
    make_provider(upstream)
    (_, raw_a), (_, raw_b) = two_teams()
    rid = sdk(gateway, raw_a).responses.create(model="gpt-5.5", input="mine").id
    url = gateway.url.replace("http", "ws") + "/v1/responses"
    frames_before = [r for r in upstream.requests if r.transport == "websocket"]
    with ws_connect(url, additional_headers={"authorization": f"Bearer {raw_b}"}) as ws:
        ws.send(
            json.dumps(
                {"type": "response.create", "model": "gpt-5.5", "input": "x", "previous_response_id": rid}
            )
        )
        frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "error" and frame["status"] == 400
        assert frame["error"]["code"] == "previous_response_not_found"
        assert frame["error"]["message"] == f"Previous response with id '{rid}' not found."
        # The socket goes on serving its own turns.
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "own"}))
        while (event := json.loads(ws.recv(timeout=10)))["type"] != "response.completed":
            assert event["type"] != "error", event
    frames = [r for r in upstream.requests if r.transport == "websocket"]
    assert [f.body.get("input") for f in frames[len(frames_before) :]] == ["own"]
    with sdk(gateway, raw_a).responses.connect(max_retries=0) as conn:
        events = sdk_turn(conn, model="gpt-5.5", input="more", previous_response_id=rid)
        assert events[-1].type == "response.completed"


def test_ownership_is_durable_in_the_request_log(gateway, upstream):
    from django.core.cache import caches

    make_provider(upstream)
    (key_a, raw_a), (_, raw_b) = two_teams()
    rid = sdk(gateway, raw_a).responses.create(model="gpt-5.5", input="kept").id
    (row,) = [r for r in request_logs(1) if r.response_id == rid]
    assert row.owner_id == key_a.owner_id
    caches["default"].clear()  # the fast path forgets: the request log still knows
    assert get(gateway, raw_b, "GET", f"/responses/{rid}").status_code == 404
    assert get(gateway, raw_a, "GET", f"/responses/{rid}").json()["id"] == rid


def test_owned_by_the_person_any_of_their_keys(gateway, upstream):
    make_provider(upstream)
    team = make_team("team-a")
    _, raw_1 = make_key(name="laptop", username="alice", team=team)
    _, raw_2 = make_key(name="ci", username="alice", team=team)
    _, raw_other = make_key(name="bobs", username="bob", team=team)
    rid = sdk(gateway, raw_1).responses.create(model="gpt-5.5", input="mine").id
    assert get(gateway, raw_2, "GET", f"/responses/{rid}").status_code == 200
    assert get(gateway, raw_other, "GET", f"/responses/{rid}").status_code == 404, (
        "a teammate: not by default"
    )


def test_sharing_within_a_team_when_the_operator_says_so(gateway, upstream, settings):
    settings.SLUICE_RESPONSE_SHARING = "team"
    make_provider(upstream)
    team = make_team("team-a")
    _, raw_alice = make_key(name="alices", username="alice", team=team)
    _, raw_bob = make_key(name="bobs", username="bob", team=team)
    _, raw_eve = make_key(name="eves", username="eve", team=make_team("team-b"))
    rid = sdk(gateway, raw_alice).responses.create(model="gpt-5.5", input="ours").id
    assert get(gateway, raw_bob, "GET", f"/responses/{rid}").json()["id"] == rid
    follow = sdk(gateway, raw_bob).responses.create(model="gpt-5.5", input="more", previous_response_id=rid)
    assert follow.status == "completed"
    with sdk(gateway, raw_bob).responses.connect(max_retries=0) as conn:
        events = sdk_turn(conn, model="gpt-5.5", input="on a socket", previous_response_id=rid)
        assert events[-1].type == "response.completed"
    assert get(gateway, raw_eve, "GET", f"/responses/{rid}").status_code == 404, "another team: never"


def test_owner_is_known_as_soon_as_the_stream_names_the_id(gateway, upstream):
    """A background-style retrieve or cancel mid-stream reaches the upstream for the owner only."""
    make_provider(upstream)
    upstream.event_delay = 0.3  # between events: the turn is still running while the others ask
    (_, raw_a), (_, raw_b) = two_teams()
    with sdk(gateway, raw_a).responses.create(model="gpt-5.5", input="slow", stream=True) as stream:
        first = next(iter(stream))
        assert first.type == "response.created"
        rid = first.response.id
        assert get(gateway, raw_b, "POST", f"/responses/{rid}/cancel").status_code == 404
        assert reached(upstream, rid) == 0
        get(gateway, raw_a, "POST", f"/responses/{rid}/cancel")
        assert reached(upstream, rid) == 1, "the owner's cancel reached the upstream"
        for _ in stream:
            pass


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.steer", "input": "x"},
        {"type": "response.inject", "input": "x"},
        {"type": "response.cancel"},
        {"type": "response.interrupt"},
    ],
    ids=["steer", "inject", "cancel", "interrupt"],
)
def test_control_events_naming_another_teams_response_never_reach_the_upstream(gateway, upstream, event):
    make_provider(upstream)
    (_, raw_a), (_, raw_b) = two_teams()
    theirs = sdk(gateway, raw_a).responses.create(model="gpt-5.5", input="mine").id
    slow(upstream, deltas=50)  # b's own turn is in flight while it names a's response
    with open_socket(gateway, raw_b) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "long"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "response.created"
        ws.send(json.dumps({**event, "response_id": theirs}))
        events = [json.loads(ws.recv(timeout=10))]
        while events[-1]["type"] not in ("response.completed", "response.incomplete", "response.failed"):
            events.append(json.loads(ws.recv(timeout=10)))
    frames = [r.body for r in upstream.requests if r.transport == "websocket"]
    assert [f["type"] for f in frames] == ["response.create"], "nothing naming a's response went upstream"
    refused = [
        e
        for e in events
        if e["type"] in ("response.steer.failed", "response.inject.failed", "response.interrupt.failed")
        or (e["type"] == "error" and e["error"]["code"] == "response_not_found")
    ]
    assert len(refused) == 1, events
    assert events[-1]["type"] == "response.completed", "b's own turn went on"
