"""An open WebSocket follows its key's policy as it is now: each response.create reads the key's current
limits, model list and team; an owner deactivated, a team disabled or a key expired (by the clock or by
command) ends open sockets, in this process and in another one within the poll interval."""

import datetime as dt
import json
import time

import pytest
from django.utils import timezone
from websockets.exceptions import ConnectionClosed

from tests.conftest import make_key, make_provider, sdk, sdk_turn
from tests.helpers import make_team, manage, open_socket, until_terminal
from tests.serveproc import ServeProcess
from tests.test_governance_http import short_window

__all__ = ["short_window"]  # a fixture, used by name

CREATE = json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"})


def closed_with(ws, seconds: float) -> tuple[list[dict], float]:
    """The frames a socket receives until it is closed, and how long that took."""
    started = time.monotonic()
    frames = []
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(json.loads(ws.recv(timeout=seconds)))
    return frames, time.monotonic() - started


def test_a_narrowed_model_list_refuses_the_next_turn_of_an_open_socket(gateway, upstream):
    make_provider(upstream)
    key, raw = make_key()
    with sdk(gateway, raw).responses.connect(max_retries=0) as conn:
        assert sdk_turn(conn, model="gpt-5.5", input="one")[-1].type == "response.completed"
        key.allowed_models = ["gpt-5-mini"]
        key.save()
        refused = sdk_turn(conn, model="gpt-5.5", input="two")[-1].model_dump()
        assert (refused["status"], refused["error"]["code"]) == (403, "model_not_found")
        assert sdk_turn(conn, model="gpt-5-mini", input="three")[-1].type == "response.completed"
    inputs = [r.body["input"] for r in upstream.requests if r.transport == "websocket"]
    assert inputs == ["one", "three"]


def test_a_lowered_rate_acts_on_an_open_socket(gateway, upstream, short_window):
    make_provider(upstream)
    key, raw = make_key()
    with sdk(gateway, raw).responses.connect(max_retries=0) as conn:
        assert sdk_turn(conn, model="gpt-5.5", input="free")[-1].type == "response.completed"
        key.rpm = 1
        key.save()
        codes = []
        for _ in range(4):  # a busy machine may cross into a fresh window once
            last = sdk_turn(conn, model="gpt-5.5", input="counted")[-1].model_dump()
            codes.append(last.get("error", {}).get("code") if last["type"] == "error" else "ok")
        assert "rate_limit_exceeded" in codes, codes


def test_a_disabled_team_refuses_and_closes_open_sockets(gateway, upstream):
    make_provider(upstream)
    team = make_team("team-a")
    _, raw = make_key(team=team)
    with open_socket(gateway, raw) as ws:
        ws.send(CREATE)
        assert until_terminal(ws)[-1]["type"] == "response.completed"
        team.enabled = False
        team.save()
        frames, _ = closed_with(ws, 5)
        assert ws.close_code == 1008 and frames[-1]["type"] == "error"


def test_deactivating_the_owner_closes_open_sockets_and_refuses_the_key(gateway, upstream):
    make_provider(upstream)
    key, raw = make_key(username="leaver")
    with open_socket(gateway, raw) as ws:
        ws.send(CREATE)
        assert until_terminal(ws)[-1]["type"] == "response.completed"
        key.owner.is_active = False
        key.owner.save()
        frames, took = closed_with(ws, 5)
        assert ws.close_code == 1008 and frames[-1]["error"]["code"] == "invalid_api_key"
    with pytest.raises(Exception) as refused:
        open_socket(gateway, raw)
    assert "401" in str(refused.value)
    client = sdk(gateway, raw)
    with pytest.raises(Exception) as http_refused:
        client.responses.create(model="gpt-5.5", input="still?")
    assert getattr(http_refused.value, "status_code", None) == 401


def test_expiry_by_the_clock_closes_an_idle_socket_at_once(gateway, upstream):
    make_provider(upstream)
    _, raw = make_key(expires_at=timezone.now() + dt.timedelta(seconds=2))
    with open_socket(gateway, raw) as ws:
        ws.send(CREATE)
        assert until_terminal(ws)[-1]["type"] == "response.completed"
        frames, took = closed_with(ws, 6)
        assert ws.close_code == 1008 and frames[-1]["error"]["code"] == "invalid_api_key"
        assert took < 4


def test_expiry_extended_keeps_the_socket(gateway, upstream):
    make_provider(upstream)
    key, raw = make_key(expires_at=timezone.now() + dt.timedelta(seconds=2))
    with open_socket(gateway, raw) as ws:
        ws.send(CREATE)
        assert until_terminal(ws)[-1]["type"] == "response.completed"
        key.expires_at = timezone.now() + dt.timedelta(days=1)
        key.save()
        time.sleep(3)
        ws.send(CREATE)
        assert until_terminal(ws)[-1]["type"] == "response.completed"


POLL = 0.5


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "change",
    [
        "from django.contrib.auth.models import User\nu = User.objects.get(username='ops')\n"
        "u.is_active = False\nu.save()",
        "from proxy.models import ApiKey, Team\nt = Team.objects.create(name='t')\n"
        "ApiKey.objects.filter(name='live').update(team=t)\nt.enabled = False\nt.save()",
        "from django.utils import timezone\nfrom proxy.models import ApiKey\n"
        "k = ApiKey.objects.get(name='live')\nk.expires_at = timezone.now()\nk.save()",
    ],
    ids=["owner-deactivated", "team-disabled", "expired-by-command"],
)
def test_a_change_in_another_process_reaches_open_sockets(upstream, change):
    make_provider(upstream)
    with ServeProcess(SLUICE_CONFIG_POLL_SECONDS=str(POLL)) as server:
        raw = manage(server.env, "createapikey", "--name", "live", "--user", "ops", "--create-user")
        headers = {"authorization": f"Bearer {raw.strip().splitlines()[-1]}"}
        url = server.url.replace("http://", "ws://") + "/v1/responses"
        deadline = time.monotonic() + POLL + 5
        while True:  # the server sees the new key within the poll interval
            try:
                ws = open_socket_at(url, headers)
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with ws:
            ws.send(CREATE)
            assert until_terminal(ws)[-1]["type"] == "response.completed"
            manage(server.env, "shell", "-c", change)
            frames, took = closed_with(ws, POLL + 5)
            assert ws.close_code == 1008 and frames[-1]["type"] == "error"
            assert took < POLL + 3


def open_socket_at(url: str, headers: dict[str, str]):
    from websockets.sync.client import connect

    return connect(url, additional_headers=headers)
