"""What one key may not do to or through another's allowance: every /v1 endpoint counts against its own
request rate, and a sticky-routing token (x-codex-turn-state) gives nothing of another key's."""

import httpx
import openai
import pytest

from tests.conftest import make_key, make_provider, sdk
from tests.helpers import make_team, open_socket, until_terminal
from tests.test_governance_http import short_window

__all__ = ["short_window"]  # a fixture, used by name


def call(gateway, raw: str, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {raw}", **kwargs.pop("headers", {})}
    return httpx.request(method, gateway.url + "/v1" + path, headers=headers, timeout=20, **kwargs)


def refused_within(
    gateway, upstream, raw: str, method: str, path: str, tries: int, **kwargs
) -> httpx.Response:
    """Ask until the key's rate refuses (a busy machine may cross into a fresh window once)."""
    for _ in range(tries):
        sent = len(upstream.requests)
        answer = call(gateway, raw, method, path, **kwargs)
        if answer.status_code == 429:
            assert len(upstream.requests) == sent, "refused before the upstream"
            return answer
        assert answer.status_code in (200, 404), answer.text
    raise AssertionError(f"{method} {path} was never refused")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/input_items"), ("GET", "models")],
    ids=["retrieve", "delete", "cancel", "input_items", "models"],
)
def test_every_endpoint_counts_against_the_request_rate(gateway, upstream, short_window, method, suffix):
    make_provider(upstream)
    _, raw = make_key(rpm=2)
    rid = sdk(gateway, raw).responses.create(model="gpt-5.5", input="one").id  # the first request
    path = "/models" if suffix == "models" else f"/responses/{rid}{suffix}"
    refused = refused_within(gateway, upstream, raw, method, path, tries=6)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["Retry-After"]) >= 1


def test_input_tokens_and_model_detail_count_too(gateway, upstream, short_window):
    make_provider(upstream, allowed_models=["gpt-5.5"])
    _, raw = make_key(rpm=2)
    refused_within(gateway, upstream, raw, "GET", "/models/gpt-5.5", tries=5)
    body = {"model": "gpt-5.5", "input": "count me"}
    refused_within(gateway, upstream, raw, "POST", "/responses/input_tokens", tries=3, json=body)


def test_turn_state_token_of_another_key_gives_nothing_over_http(gateway, upstream):
    make_provider(upstream)
    (_, raw_a), (_, raw_b) = (
        make_key(name="a", username="alice", team=make_team("team-a")),
        make_key(name="b", username="bob", team=make_team("team-b")),
    )
    upstream.handshake_headers = {"x-codex-turn-state": "upstream-token-of-a", "openai-model": "a-model"}
    body = {"model": "gpt-5.5", "input": "hi", "stream": True}
    first = call(gateway, raw_a, "POST", "/responses", json=body)
    token = first.headers["x-codex-turn-state"]
    assert token.startswith("sluice-ts-") and first.headers["openai-model"] == "a-model"
    upstream.handshake_headers = {}
    other = call(gateway, raw_b, "POST", "/responses", json=body, headers={"x-codex-turn-state": token})
    assert other.status_code == 200
    assert "openai-model" not in other.headers, "none of the first key's upstream headers"
    assert other.headers.get("x-codex-turn-state") != token
    assert upstream.requests[-1].headers.get("x-codex-turn-state") is None, "nor its upstream token"
    # The key that got it still has it.
    upstream.handshake_headers = {"x-codex-turn-state": "upstream-token-of-a", "openai-model": "a-model"}
    again = call(gateway, raw_a, "POST", "/responses", json=body, headers={"x-codex-turn-state": token})
    assert again.headers["x-codex-turn-state"] == token and again.headers["openai-model"] == "a-model"
    assert upstream.requests[-1].headers.get("x-codex-turn-state") == "upstream-token-of-a"


def test_turn_state_token_of_another_key_gives_nothing_over_websocket(gateway, upstream):
    make_provider(upstream)
    _, raw_a = make_key(name="a", username="alice", team=make_team("team-a"))
    _, raw_b = make_key(name="b", username="bob", team=make_team("team-b"))
    upstream.handshake_headers = {"x-codex-turn-state": "upstream-token-of-a", "openai-model": "a-model"}
    with open_socket(gateway, raw_a) as ws:
        token = ws.response.headers["x-codex-turn-state"]
        ws.send('{"type": "response.create", "model": "gpt-5.5", "input": "hi"}')
        until_terminal(ws)
    upstream.handshake_headers = {}
    with open_socket(gateway, raw_b, **{"x-codex-turn-state": token}) as ws:
        assert ws.response.headers["x-codex-turn-state"] != token
        assert "openai-model" not in ws.response.headers
        ws.send('{"type": "response.create", "model": "gpt-5.5", "input": "hi"}')
        assert until_terminal(ws)[-1]["type"] == "response.completed"
    handshakes = [r for r in upstream.requests if r.transport == "websocket"]
    assert handshakes[-1].headers.get("x-codex-turn-state") is None


def test_sdk_refused_over_its_rate_on_retrieve(gateway, upstream, short_window):
    make_provider(upstream)
    _, raw = make_key(rpm=1)
    client = sdk(gateway, raw)
    rid = client.responses.create(model="gpt-5.5", input="one").id
    with pytest.raises(openai.RateLimitError):
        for _ in range(3):  # one may land in a fresh window on a busy machine; three cannot all
            client.responses.retrieve(rid)
