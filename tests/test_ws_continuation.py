"""The connection-local continuation cache of a client socket, checked against what the upstream receives:
the gateway rebuilds a conversation exactly when the upstream cannot continue it, and forgets it when a
turn fails. The fake upstream refuses a tool output whose call is missing, as the service does."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.conftest import TERMINAL, make_provider, request_logs
from tests.fakeupstream import FakeUpstream, function_call_item, item_text, message_item

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


@pytest.fixture
def socket(gateway, api_key) -> Iterator[ClientConnection]:
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {api_key}"},
    ) as ws:
        yield ws


def turn(ws: ClientConnection, **fields: Any) -> list[dict]:
    ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", **fields}))
    events = [json.loads(ws.recv(timeout=15))]
    while events[-1]["type"] not in TERMINAL:
        events.append(json.loads(ws.recv(timeout=15)))
    return events


def weather_tool(body: dict) -> list[dict]:
    """Ask for the weather tool (with a fresh call id each time), then say what it answered."""
    last = body["input"][-1]
    if last.get("type") == "function_call_output":
        return [message_item(f"tool said: {item_text(last['output'])}")]
    return [function_call_item("get_weather", '{"city": "Oslo"}')]


def sent(fake: FakeUpstream) -> list[dict]:
    """The turns the upstream received (HTTP bodies and WebSocket frames), oldest first."""
    return [r.body for r in fake.requests if r.path == "/v1/responses" and r.body is not None]


@pytest.mark.parametrize("how", ["http-only upstream", "upstream socket changed"])
def test_a_tool_call_continuation_sends_input_plus_output_plus_new_items(
    gateway, upstream, upstream_b, socket, how
):
    upstream.responder = upstream_b.responder = weather_tool
    if how == "http-only upstream":
        first = make_provider(upstream, websocket_mode="never")
    else:
        first = make_provider(upstream, name="first", priority=1)
        make_provider(upstream_b, name="second", priority=2)
    asked = [{"type": "message", "role": "user", "content": "weather in Oslo?"}]
    one = turn(socket, store=False, tools=TOOLS, input=asked)
    assert one[-1]["type"] == "response.completed"
    output = one[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["function_call"]
    if how == "upstream socket changed":
        first.enabled = False
        first.save()
    answer = [{"type": "function_call_output", "call_id": output[0]["call_id"], "output": "sunny"}]
    two = turn(socket, store=False, tools=TOOLS, previous_response_id=one[-1]["response"]["id"], input=answer)
    assert two[-1]["type"] == "response.completed", two[-1]
    assert two[-1]["response"]["output"][0]["content"][0]["text"] == "tool said: sunny"
    continued = sent(upstream if how == "http-only upstream" else upstream_b)[-1]
    assert "previous_response_id" not in continued
    assert continued["input"] == [*sent(upstream)[0]["input"], *output, *answer]
    assert continued["input"][1]["call_id"] == answer[0]["call_id"]


def test_a_continuation_on_the_same_upstream_socket_sends_only_the_new_items(gateway, upstream, socket):
    upstream.responder = weather_tool
    make_provider(upstream)
    one = turn(socket, store=False, tools=TOOLS, input="weather?")
    call = one[-1]["response"]["output"][0]
    answer = [{"type": "function_call_output", "call_id": call["call_id"], "output": "rain"}]
    two = turn(socket, store=False, tools=TOOLS, previous_response_id=one[-1]["response"]["id"], input=answer)
    assert two[-1]["response"]["output"][0]["content"][0]["text"] == "tool said: rain"
    continued = sent(upstream)[-1]
    assert continued["input"] == answer and continued["previous_response_id"] == one[-1]["response"]["id"]
    assert upstream.ws_connections == 1


# The error frame of a turn whose upstream broke off after its first event.
BROKE_OFF = {
    "type": "error",
    "status": 502,
    "error": {
        "type": "server_error",
        "code": "upstream_stream_error",
        "message": "The upstream broke off during the response.",
        "param": None,
    },
}


@pytest.mark.parametrize("kind", ["response.failed", "error", "broken"])
@pytest.mark.parametrize("mode", ["never", "auto"])
@pytest.mark.parametrize("lane", [None, "a"], ids=["default-lane", "named-lane"])
def test_a_failed_turn_empties_the_cache(gateway, upstream, socket, kind, mode, lane):
    """A turn that failed (``response.failed``, ``error``) or whose upstream broke off mid-stream."""
    make_provider(upstream, websocket_mode=mode)
    on_lane = {"stream_id": lane} if lane else {}
    # Neither the response before the failure nor the failed one can be continued afterwards. Each is
    # tried after its own failure: any refused continuation empties the cache by itself.
    for continued in ("the one before", "the failed one"):
        one = turn(socket, **on_lane, store=False, input="one")
        assert one[-1]["type"] == "response.completed"
        if kind == "broken":
            upstream.drop_after_events = 3
        else:
            upstream.fail_event = kind
        failed = turn(
            socket, **on_lane, store=False, previous_response_id=one[-1]["response"]["id"], input="two"
        )
        if kind == "broken":
            assert failed[-1] == {**BROKE_OFF, **on_lane}
        else:
            assert failed[-1]["type"] == kind
        upstream.fail_event = upstream.drop_after_events = None
        seen = len(upstream.requests)
        previous = (one if continued == "the one before" else failed)[0]["response"]["id"]
        again = turn(socket, **on_lane, store=False, previous_response_id=previous, input="three")
        assert [e["type"] for e in again] == ["error"], continued
        assert again[0]["error"]["code"] == "previous_response_not_found" and again[0]["status"] == 400
        assert len(upstream.requests) == seen, f"{continued}: the gateway should know the response is gone"
    # The socket still serves a fresh conversation.
    assert turn(socket, **on_lane, store=False, input="four")[-1]["type"] == "response.completed"


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_model_redirects_apply_on_the_upstream_socket(gateway, upstream, socket, transport):
    """And over upstream HTTP, where the gateway writes the body itself."""
    make_provider(
        upstream,
        allowed_models=["fast"],
        model_redirects={"fast": "gpt-5-mini"},
        websocket_mode="auto" if transport == "websocket" else "never",
    )
    one = turn(socket, model="fast", store=False, input="a", metadata={"tag": "kept"})
    two = turn(socket, model="fast", store=False, input="b", previous_response_id=one[-1]["response"]["id"])
    assert two[-1]["type"] == "response.completed"
    frames = [r.body for r in upstream.requests if r.transport == transport]
    assert [f["model"] for f in frames] == ["gpt-5-mini", "gpt-5-mini"]
    assert frames[0]["metadata"] == {"tag": "kept"} and frames[0]["input"] == "a"
    if transport == "websocket":
        assert upstream.ws_connections == 1 and upstream.http_requests == 0
    else:
        assert upstream.ws_connections == 0 and upstream.http_requests == 2
    assert one[-1]["response"]["model"] == "gpt-5-mini"
    rows = request_logs(2)
    assert [(r.requested_model, r.upstream_model, r.upstream_transport) for r in rows] == [
        ("fast", "gpt-5-mini", transport)
    ] * 2
