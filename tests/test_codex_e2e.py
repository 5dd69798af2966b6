"""The real Codex CLI through the gateway, with no route to the internet."""

import json
import logging

import pytest

from tests.codex_cli import codex_binary, run_codex
from tests.conftest import make_provider, request_logs, require
from tests.fakeupstream import function_call_item


@pytest.fixture(params=["pinned", "latest"])
def version(request: pytest.FixtureRequest) -> str:
    """Every task runs with the project's pinned Codex and with the newest release (codex-latest)."""
    require(
        codex_binary(request.param) is not None, f"the {request.param} Codex CLI is not installed (npm ci)"
    )
    return request.param


def tool_loop_responder(body: dict) -> list[dict] | None:
    """First turn: ask Codex to run a command; once its output comes back, say what it printed."""
    items = body["input"] if isinstance(body["input"], list) else []
    if items and items[-1].get("type") == "function_call_output":
        return None  # the fake's default answer: "tool said: <output>"
    return [function_call_item("exec_command", json.dumps({"cmd": "echo sluice-tool-ok"}), "call_codex_1")]


def test_plain_turn_over_websocket(gateway, upstream, api_key, tmp_path, version):
    make_provider(upstream)
    result = run_codex(
        gateway.url + "/v1", api_key, "say hello", websockets=True, workdir=tmp_path, version=version
    )
    assert result.exit_code == 0, result.describe()
    assert result.final_message == "echo: say hello"
    assert result.error_messages == [], "Codex fell back or retried"
    assert (upstream.ws_connections, upstream.http_requests) == (1, 0)
    frames = [r.body for r in upstream.requests if r.transport == "websocket"]
    assert frames[0].get("generate") is False, "Codex's warm-up reaches the upstream socket"
    assert frames[1]["previous_response_id"], "the real turn chains from the warm-up on the same socket"
    rows = request_logs(2)
    assert {(r.client_transport, r.upstream_transport) for r in rows} == {("websocket", "websocket")}


def test_tool_call_loop_over_websocket(gateway, upstream, api_key, tmp_path, version):
    def responder(body: dict) -> list[dict]:
        from tests.fakeupstream import default_responder

        return tool_loop_responder(body) or default_responder(body)

    upstream.responder = responder
    make_provider(upstream)
    result = run_codex(
        gateway.url + "/v1", api_key, "run the check", websockets=True, workdir=tmp_path, version=version
    )
    assert result.exit_code == 0, result.describe()
    assert "sluice-tool-ok" in (result.final_message or ""), result.describe()
    assert (upstream.ws_connections, upstream.http_requests) == (1, 0)
    frames = [r.body for r in upstream.requests if r.transport == "websocket"]
    tool_turn = frames[-1]
    assert tool_turn["input"][-1]["type"] == "function_call_output"
    assert tool_turn["previous_response_id"], "the tool result continues the previous response on one socket"
    assert len(request_logs(3)) == 3


def test_tool_call_loop_with_an_http_only_upstream(gateway, upstream, api_key, tmp_path, version):
    """Codex keeps its WebSocket to the gateway; the gateway serves the continuations over HTTP."""

    def responder(body: dict) -> list[dict]:
        from tests.fakeupstream import default_responder

        return tool_loop_responder(body) or default_responder(body)

    upstream.responder = responder
    make_provider(upstream, websocket_mode="never")
    result = run_codex(
        gateway.url + "/v1", api_key, "run the check", websockets=True, workdir=tmp_path, version=version
    )
    assert result.exit_code == 0, result.describe()
    assert "sluice-tool-ok" in (result.final_message or "")
    assert upstream.ws_connections == 0
    last = [r.body for r in upstream.requests if r.transport == "http"][-1]
    assert "previous_response_id" not in last and last["input"][0]["role"] == "developer"


def test_switch_off_one_refused_handshake_then_http(gateway, upstream, api_key, tmp_path, caplog, version):
    from settings_app.models import SystemSettings

    make_provider(upstream)
    row = SystemSettings.load()
    row.client_websockets = False
    row.save()
    with caplog.at_level(logging.INFO, logger="sluice.refusals"):
        result = run_codex(
            gateway.url + "/v1", api_key, "say hello", websockets=True, workdir=tmp_path, version=version
        )
    assert result.exit_code == 0, result.describe()
    assert result.final_message == "echo: say hello"
    refused = [r for r in caplog.records if "websockets_disabled" in r.getMessage()]
    assert len(refused) == 1, "Codex must fall back at once on 426, not retry the handshake"
    assert upstream.ws_connections == 0 and upstream.http_requests == 1
    rows = request_logs(2)  # the refused upgrade leaves a row too
    assert [(r.client_transport, r.status) for r in rows] == [("websocket", 426), ("http", 200)]


def test_plain_turn_over_http(gateway, upstream, api_key, tmp_path, version):
    make_provider(upstream)
    result = run_codex(
        gateway.url + "/v1", api_key, "say hello", websockets=False, workdir=tmp_path, version=version
    )
    assert result.exit_code == 0, result.describe()
    assert result.final_message == "echo: say hello"
    assert upstream.http_requests == 1
