"""The words and shapes of refusals, on their own and through the gateway for a client that names itself
Codex and one that does not (docs/protocol.md, "Refusals")."""

import json
import time

import httpx
import openai
import pytest
from asgiref.sync import async_to_sync
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from proxy.common.wire import WireError
from proxy.governance import refusals
from proxy.governance.refusals import for_client, in_words
from tests.conftest import make_key, make_provider, request_logs

CODEX = {"originator": "codex_exec", "user-agent": "codex_exec/0.169.0 (Debian 12; x86_64)"}


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0.2, "1 s"),
        (59, "59 s"),
        (61, "2 min"),
        (3600, "1 h"),
        (5 * 3600 + 179, "5 h 3 min"),
        (3 * 86400, "3 days"),
    ],
)
def test_a_reset_is_said_in_words(seconds, words):
    assert in_words(seconds) == words


def test_only_codex_gets_key_and_team_refusals_as_400():
    revoked = WireError(401, "invalid_api_key", "revoked")
    shaped = for_client(revoked, CODEX)
    assert (shaped.status, shaped.code, shaped.message) == (400, "invalid_api_key", "revoked")
    assert revoked.status == 401, "the original, which the request log keeps, is untouched"
    assert for_client(revoked, {"user-agent": "OpenAI/Python 2.8.1"}) is revoked
    assert for_client(WireError(403, "team_disabled", "off"), {"originator": "codex_cli_rs"}).status == 400
    limited = WireError(429, "rate_limit_exceeded", "wait")
    assert for_client(limited, CODEX) is limited, "a 429 Codex already handles"


def test_codex_header_values_are_visible_ascii():
    assert refusals.header_text("budget of team 'Équipe 東京'") == "budget of team '?quipe ??'"


def test_a_flood_of_made_up_keys_gets_the_generic_words_past_the_lookup_budget(monkeypatch):
    monkeypatch.setattr(refusals, "LOOKUPS_PER_SECOND", 0)
    error = async_to_sync(refusals.unauthenticated)("sk-made-up-key-never-seen")
    assert (error.status, error.message) == (401, refusals.GENERIC)


@pytest.mark.parametrize(("headers", "status"), [(CODEX, 400), ({"user-agent": "curl/8"}, 401)])
def test_a_revoked_key_is_told_so_in_the_status_its_client_can_act_on(gateway, upstream, headers, status):
    make_provider(upstream)
    key, raw = make_key(name="laptop", enabled=False)
    answer = httpx.post(
        gateway.url + "/v1/responses",
        headers={"Authorization": f"Bearer {raw}", **headers},
        json={"model": "gpt-5.5", "input": "hi"},
    )
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert (
        error["message"]
        == "The API key 'laptop' was revoked (disabled by an administrator); ask for a new one."
    )
    assert raw not in answer.text
    assert [(r.status, r.error_code) for r in request_logs(1)] == [(401, "invalid_api_key")]


def test_an_unknown_key_and_no_key_are_told_apart(gateway):
    unknown = httpx.post(
        gateway.url + "/v1/responses", headers={"Authorization": "Bearer sk-nobody"}, json={}
    )
    assert unknown.json()["error"]["message"] == "Incorrect API key provided: this gateway has no such key."
    missing = httpx.post(gateway.url + "/v1/responses", json={})
    assert "No API key provided" in json.loads(missing.text)["error"]["message"]


def test_deactivating_a_user_closes_their_keys_sockets_saying_why(gateway, upstream):
    make_provider(upstream)
    key, raw = make_key(name="laptop", username="leaver")
    with connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {raw}"},
    ) as ws:
        key.owner.is_active = False
        key.owner.save()
        error = json.loads(ws.recv(timeout=5))
        assert (error["status"], error["error"]["code"]) == (401, "invalid_api_key")
        assert "deactivated" in error["error"]["message"]
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1008
    refused = httpx.post(
        gateway.url + "/v1/responses", headers={"Authorization": f"Bearer {raw}"}, json={"model": "gpt-5.5"}
    )
    assert (
        refused.status_code == 401 and "belongs to a deactivated user" in refused.json()["error"]["message"]
    )


def test_the_sdk_waits_as_retry_after_says_and_its_turn_succeeds(gateway, upstream, settings):
    """The SDK's default retries (two) honour Retry-After: the retry lands in the next window, not before."""
    window = 5.0
    settings.SLUICE_RATE_WINDOW_SECONDS = window
    time.sleep(window - time.time() % window + 0.05)
    make_provider(upstream)
    key, raw = make_key(rpm=1)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=raw, timeout=20)
    assert client.responses.create(model="gpt-5.5", input="first").output_text == "echo: first"
    started = time.time()
    window_ends = (started // window + 1) * window
    assert client.responses.create(model="gpt-5.5", input="second").output_text == "echo: second"
    assert time.time() >= window_ends, "the SDK came back before the window turned"
    rows = request_logs(3)
    assert [(r.status, r.error_code) for r in rows] == [(200, ""), (429, "rate_limit_exceeded"), (200, "")]
