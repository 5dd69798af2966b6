"""Client events that act on the turn in flight (interrupt, cancel, steer), lanes, upstream socket
rotation and the handshake headers, through a running gateway and the fake upstream."""

import json
import time
from typing import Any

import pytest
from django.core.cache import cache

from providers.routing import response_key
from proxy.upstream.websocket import public_url
from tests.conftest import TERMINAL, make_provider, request_logs
from tests.fakeupstream import function_call_item, message_item
from tests.helpers import create, open_socket, read, slow, until_terminal


def interrupt_mid_stream(
    ws: Any, control: str = "response.interrupt", store: bool = False
) -> tuple[list[dict[str, Any]], float]:
    """Start a long turn, interrupt (or cancel) it after its first text delta; the events and the time
    the interrupt took to end the turn."""
    create(ws, "long", store=store)
    events = [read(ws)]
    response_id = events[0]["response"]["id"]
    while events[-1]["type"] != "response.output_text.delta":
        events.append(read(ws))
    sent = time.monotonic()
    ws.send(json.dumps({"type": control, "response_id": response_id, "mode": "discard_partial_items"}))
    while events[-1]["type"] not in TERMINAL:
        events.append(read(ws))
    return events, time.monotonic() - sent


@pytest.mark.parametrize("mode", ["auto", "never"], ids=["upstream-websocket", "upstream-http"])
def test_interrupt_ends_the_turn_at_once_and_the_next_turn_continues(gateway, upstream, api_key, mode):
    make_provider(upstream, websocket_mode=mode)
    # The upstream goes silent after the first text delta (response.created, in_progress, the message
    # and its content part came before): the interrupt must end the turn without waiting for more.
    upstream.stall_after_events = 5
    with open_socket(gateway, api_key) as ws:
        events, took = interrupt_mid_stream(ws)
        kinds = [e["type"] for e in events]
        assert "response.interrupt.accepted" in kinds
        assert "response.output_item.interrupted" in kinds, "the partial message is discarded"
        terminal = events[-1]
        assert terminal["type"] == "response.incomplete"
        assert terminal["response"]["incomplete_details"] == {"reason": "interrupted"}
        assert took < 0.1, f"the interrupt took {took:.3f} s"
        upstream.stall_after_events = None
        create(ws, "next", store=False, previous_response_id=terminal["response"]["id"])
        after = until_terminal(ws)
        assert after[-1]["type"] == "response.completed", after[-1]
    if mode == "never":
        # Over HTTP the gateway sent the whole conversation: the first input, nothing of the discarded
        # partial message, and the new input.
        last = [r.body for r in upstream.requests if r.transport == "http"][-1]
        assert [item.get("content") for item in last["input"]] == ["long", "next"]
        assert upstream.wait_for(lambda: upstream.open_http_streams == 0), "the upstream request was dropped"
    else:
        frames = [r.body for r in upstream.requests if r.transport == "websocket"]
        assert [f["type"] for f in frames] == ["response.create", "response.interrupt", "response.create"]
        assert frames[2]["previous_response_id"] == terminal["response"]["id"], "continued on the same socket"
        assert upstream.ws_connections == 1
    rows = request_logs(2)
    assert [r.status for r in rows] == [200, 200]


GATEWAY_WRITTEN = {"response.interrupt.accepted", "response.output_item.interrupted", "response.incomplete"}


@pytest.mark.parametrize("control", ["response.interrupt", "response.cancel"])
def test_a_turn_stopped_over_upstream_http_ends_as_the_service_ends_it(gateway, upstream, api_key, control):
    """Over upstream HTTP the gateway writes the closing events itself: numbered on from the relayed ones,
    the finished items kept in output order, the partial message dropped (an interrupt in Codex's
    ``discard_partial_items`` mode) or finished as incomplete and kept (a cancel)."""
    provider = make_provider(upstream, websocket_mode="never")
    upstream.responder = lambda body: [
        {"type": "reasoning", "summary": []},
        function_call_item("lookup", '{"q": 1}'),
        message_item("a long answer " * 20),
    ]
    slow(upstream)
    with open_socket(gateway, api_key) as ws:
        create(ws, "long")
        events = [read(ws)]
        rid = events[0]["response"]["id"]
        while events[-1]["type"] != "response.output_text.delta":
            events.append(read(ws))
        ws.send(json.dumps({"type": control, "response_id": rid, "mode": "discard_partial_items"}))
        while events[-1]["type"] not in TERMINAL:
            events.append(read(ws))
    assert [e["sequence_number"] for e in events] == list(range(len(events))), "one sequence, no gap"
    relayed = next(
        i
        for i, e in enumerate(events)
        if e["type"] in GATEWAY_WRITTEN or e.get("item", {}).get("status") == "incomplete"
    )
    done = [e["item"] for e in events[:relayed] if e["type"] == "response.output_item.done"]
    assert [item["type"] for item in done] == ["reasoning", "function_call"]
    partial = next(
        e["item"] for e in events if e["type"] == "response.output_item.added" and e["output_index"] == 2
    )
    expected: list[dict[str, Any]] = []
    if control == "response.interrupt":
        kept = done
        expected.append(
            {"type": "response.interrupt.accepted", "response_id": rid, "sequence_number": relayed}
        )
        interrupted = {
            "type": "response.output_item.interrupted",
            "response_id": rid,
            "item_id": partial["id"],
        }
        expected.append({**interrupted, "output_index": 2, "sequence_number": relayed + 1})
    else:
        kept = [*done, {**partial, "status": "incomplete"}]
        finished = {"type": "response.output_item.done", "output_index": 2, "item": kept[-1]}
        expected.append({**finished, "sequence_number": relayed})
    assert events[relayed:-1] == expected
    response = events[-1]["response"]
    reason = "interrupted" if control == "response.interrupt" else "cancelled"
    assert (response["id"], response["object"], response["status"]) == (rid, "response", "incomplete")
    assert response["incomplete_details"] == {"reason": reason}
    assert response["output"] == kept, "the finished items, in output order"
    assert cache.get(response_key(rid)) == provider.id, "stored: it is continued on its provider"


@pytest.mark.parametrize(
    ("which", "code"), [("finished", "response_already_completed"), ("unknown", "response_not_found")]
)
def test_interrupt_for_a_response_not_in_flight_gets_the_service_answer(
    gateway, upstream, api_key, which, code
):
    make_provider(upstream, websocket_mode="never")
    with open_socket(gateway, api_key) as ws:
        create(ws, "short")
        done = until_terminal(ws)[-1]
        target = done["response"]["id"] if which == "finished" else "resp_nobody_made"
        ws.send(
            json.dumps({"type": "response.interrupt", "response_id": target, "mode": "discard_partial_items"})
        )
        answer = read(ws)
        # The whole frame: Codex matches the failure to its interrupt by response_id, and shows the message.
        message = answer.get("error", {}).get("message")
        assert isinstance(message, str) and message, answer
        assert answer == {
            "type": "response.interrupt.failed",
            "response_id": target,
            "error": {"type": "invalid_request_error", "code": code, "message": message},
        }
        ws.send(json.dumps({"type": "response.processed", "response_id": done["response"]["id"]}))
        create(ws, "again")
        assert until_terminal(ws)[-1]["type"] == "response.completed", "the session goes on"


def test_steer_is_relayed_on_the_upstream_socket(gateway, upstream, api_key):
    make_provider(upstream)
    slow(upstream, deltas=50)  # a second in flight: the steer is answered long before the end
    with open_socket(gateway, api_key) as ws:
        create(ws, "long")
        created = read(ws)
        steer = {
            "type": "response.steer",
            "previous_response_id": created["response"]["id"],
            "input": "shorter",
        }
        ws.send(json.dumps(steer))
        events = until_terminal(ws)
        assert "response.steer.accepted" in [e["type"] for e in events]
    frames = [r.body for r in upstream.requests if r.transport == "websocket"]
    assert frames[1] == steer


def test_steer_over_http_is_refused_and_the_socket_stays_open(gateway, upstream, api_key):
    make_provider(upstream, websocket_mode="never")
    slow(upstream, deltas=50)  # a second in flight: the steer is answered long before the end
    with open_socket(gateway, api_key) as ws:
        create(ws, "long")
        created = read(ws)
        ws.send(
            json.dumps(
                {"type": "response.steer", "previous_response_id": created["response"]["id"], "input": "x"}
            )
        )
        events = until_terminal(ws)
        kinds = [e["type"] for e in events]
        assert "response.steer.failed" in kinds and "error" not in kinds
        assert events[-1]["type"] == "response.completed"


@pytest.mark.parametrize("kind", ["response.steer", "response.inject", "response.rewind"])
def test_a_client_event_without_an_upstream_socket_is_refused_in_the_service_shape(
    gateway, upstream, api_key, kind
):
    """Over upstream HTTP nothing can carry a steer, an injection or an event type the gateway does not
    know: each gets the service's own refusal for it (naming what it refused), and the session goes on."""
    make_provider(upstream, websocket_mode="never")
    frame = {"type": kind, "previous_response_id": "resp_lineage", "response_id": "resp_target", "input": "x"}
    with open_socket(gateway, api_key) as ws:
        ws.send(json.dumps(frame))
        answer = read(ws)
        message = answer.get("error", {}).get("message")
        assert isinstance(message, str) and message, answer
        if kind == "response.steer":
            error = {"type": "invalid_request_error", "code": "steering_unavailable", "message": message}
            steer = {"previous_response_id": "resp_lineage", "input": "x"}
            assert answer == {"type": "response.steer.failed", "steer": steer, "error": error}
        elif kind == "response.inject":
            error = {"code": "response_not_found", "message": message}
            assert answer == {
                "type": "response.inject.failed",
                "response_id": "resp_target",
                "input": "x",
                "error": error,
            }
        else:
            assert answer["type"] == "error" and answer["status"] == 400
            assert (answer["error"]["code"], answer["error"]["param"]) == ("unsupported_event_type", "type")
            assert kind in message
        create(ws, "again")
        assert until_terminal(ws)[-1]["type"] == "response.completed", "the session goes on"


def test_two_lanes_stream_side_by_side(gateway, upstream, api_key):
    make_provider(upstream)
    upstream.text_deltas = 20
    upstream.event_delay = 0.02
    with open_socket(gateway, api_key) as ws:
        create(ws, "solo")
        until_terminal(ws)
        create(ws, "left", stream_id="a")
        create(ws, "right", stream_id="b")
        ended: dict[str, dict[str, Any]] = {}
        order: list[str] = []  # the lane of each text delta, as they arrived
        while len(ended) < 2:
            event = read(ws)
            assert event.get("stream_id") in ("a", "b"), event
            if event["type"] == "response.output_text.delta":
                order.append(event["stream_id"])
            if event["type"] in TERMINAL:
                ended[event["stream_id"]] = event
    assert {k: v["type"] for k, v in ended.items()} == {"a": "response.completed", "b": "response.completed"}
    # Each lane streams for 0.4 s: side by side, their deltas interleave; one after the other, all of one
    # lane's come first. (A wall-clock bound would also fail on a loaded machine.)
    first, second = order[0], ("b" if order[0] == "a" else "a")
    last_of_first = len(order) - 1 - order[::-1].index(first)
    assert order.index(second) < last_of_first, f"the lanes ran one after the other: {''.join(order)}"
    assert len(request_logs(3)) == 3


def test_lane_limits(gateway, upstream, api_key):
    """At most 16 responses in flight on a connection (bad stream ids: ``test_ws_frames.py``)."""
    make_provider(upstream)
    with open_socket(gateway, api_key) as ws:
        upstream.hang = True
        for lane in range(17):
            create(ws, "x", stream_id=f"lane-{lane}")
        error = read(ws)
        assert error["error"]["code"] == "websocket_stream_limit_reached" and error["stream_id"] == "lane-16"


@pytest.mark.parametrize("lanes", [False, True], ids=["own-socket", "shared-lanes-socket"])
def test_upstream_connection_limit_is_invisible_to_the_client(gateway, upstream, api_key, lanes):
    """Also for a lane on the socket the lanes share (another lane still on it): that socket is retired,
    the lane moves to a fresh one the lanes share."""
    make_provider(upstream)
    upstream.ws_turn_limit = 2 if lanes else 1
    upstream.ws_lanes = lanes
    lane = "a" if lanes else None
    on_lane = {"stream_id": lane} if lanes else {}
    with open_socket(gateway, api_key) as ws:
        create(ws, "one", store=False, **on_lane)
        first = until_terminal(ws, lane)
        if lanes:
            create(ws, "other", store=False, stream_id="b")
            assert until_terminal(ws, "b")[-1]["type"] == "response.completed"
        create(ws, "two", store=False, previous_response_id=first[-1]["response"]["id"], **on_lane)
        second = until_terminal(ws, lane)
    assert [e["type"] for e in second if e["type"] == "error"] == []
    assert second[-1]["type"] == "response.completed"
    assert upstream.ws_connections == 2 and upstream.http_requests == 0
    replay = [r for r in upstream.requests if r.transport == "websocket"][-1]
    assert "previous_response_id" not in replay.body and len(replay.body["input"]) == 3, (
        "the whole conversation"
    )
    assert replay.connection_id == 2 and replay.body.get("stream_id") == lane, "on a fresh (lanes) socket"
    assert [r.status for r in request_logs(3 if lanes else 2)] == [200] * (3 if lanes else 2)


@pytest.mark.parametrize(
    ("lane", "mode"),
    [(None, "auto"), ("a", "auto"), (None, "never")],
    ids=["default-lane", "shared-lanes-socket", "upstream-http"],
)
def test_turn_state_header_round_trip(gateway, upstream, upstream_b, api_key, lane, mode):
    make_provider(upstream, name="alpha", priority=1, websocket_mode=mode)
    make_provider(upstream_b, name="beta", priority=1, websocket_mode=mode)
    upstream.ws_lanes = upstream_b.ws_lanes = lane is not None
    on_lane = {"stream_id": lane} if lane else {}
    upstream.handshake_headers = upstream_b.handshake_headers = {
        "x-codex-turn-state": "upstream-token",
        "openai-model": "gpt-5.5",
    }
    with open_socket(gateway, api_key) as ws:
        token = ws.response.headers["x-codex-turn-state"]
        assert token.startswith("sluice-ts-")
        assert ws.response.headers["x-codex-websocket-max-message-bytes"].isdigit()
        create(ws, "first", **on_lane)
        until_terminal(ws, lane)
    transport = "websocket" if mode == "auto" else "http"
    served = upstream if [r for r in upstream.requests if r.transport == transport] else upstream_b
    for _ in range(3):
        with open_socket(gateway, api_key, **{"x-codex-turn-state": token}) as ws:
            assert ws.response.headers["x-codex-turn-state"] == token
            assert ws.response.headers["openai-model"] == "gpt-5.5"
            create(ws, "again", **on_lane)
            until_terminal(ws, lane)
    turns = [r for r in served.requests if r.transport == transport and r.path == "/v1/responses"]
    assert len(turns) == 4, "a reconnect with the token goes to the same provider"
    forwarded = [r.headers.get("x-codex-turn-state") for r in turns]
    assert forwarded == [None, "upstream-token", "upstream-token", "upstream-token"]


def test_turn_state_over_http(gateway, upstream, upstream_b, api_key):
    import httpx

    make_provider(upstream, name="alpha", priority=1)
    make_provider(upstream_b, name="beta", priority=1)
    upstream.handshake_headers = upstream_b.handshake_headers = {
        "x-codex-turn-state": "upstream-token",
        "openai-model": "gpt-5.5",
    }
    body = {"model": "gpt-5.5", "input": "hi", "stream": True}
    auth = {"authorization": f"Bearer {api_key}"}
    first = httpx.post(gateway.url + "/v1/responses", json=body, headers=auth, timeout=20)
    token = first.headers["x-codex-turn-state"]
    assert token.startswith("sluice-ts-") and first.headers["openai-model"] == "gpt-5.5"
    served = upstream if upstream.http_requests else upstream_b
    for _ in range(3):
        again = httpx.post(
            gateway.url + "/v1/responses",
            json=body,
            headers={**auth, "x-codex-turn-state": token},
            timeout=20,
        )
        assert again.headers["x-codex-turn-state"] == token
    assert served.http_requests == 4, "requests with the token go to the provider that issued it"
    forwarded = [r.headers.get("x-codex-turn-state") for r in served.requests if r.path == "/v1/responses"]
    assert forwarded == [None, "upstream-token", "upstream-token", "upstream-token"]


def test_a_lane_continues_another_lanes_response(gateway, upstream, api_key):
    make_provider(upstream)
    with open_socket(gateway, api_key) as ws:
        create(ws, "first", stream_id="a", store=False)
        first = until_terminal(ws, "a")[-1]
        create(ws, "second", stream_id="b", store=False, previous_response_id=first["response"]["id"])
        second = until_terminal(ws, "b")
    assert second[-1]["type"] == "response.completed", second[-1]
    frames = [r for r in upstream.requests if r.transport == "websocket"]
    assert frames[0].connection_id != frames[1].connection_id, "each lane has its own upstream socket"
    assert "stream_id" not in frames[1].body and "previous_response_id" not in frames[1].body
    # The other lane's socket never saw the conversation: it gets all of it, each bare string input as
    # the user message it stands for.
    assert frames[1].body["input"] == [
        {"type": "message", "role": "user", "content": "first"},
        *first["response"]["output"],
        {"type": "message", "role": "user", "content": "second"},
    ]


@pytest.mark.parametrize("lane", [None, "a"], ids=["own-socket", "shared-lanes-socket"])
def test_an_upstream_socket_near_its_age_limit_is_replaced_between_turns(
    gateway, upstream, api_key, settings, lane
):
    make_provider(upstream)
    upstream.ws_lanes = lane is not None
    on_lane = {"stream_id": lane} if lane else {}
    settings.SLUICE_UPSTREAM_WS_MAX_AGE = 0
    with open_socket(gateway, api_key) as ws:
        create(ws, "one", store=False, **on_lane)
        first = until_terminal(ws, lane)[-1]
        create(ws, "two", store=False, previous_response_id=first["response"]["id"], **on_lane)
        second = until_terminal(ws, lane)
    assert [e["type"] for e in second if e["type"] == "error"] == []
    assert upstream.ws_connections == 2
    assert "previous_response_id" not in [r.body for r in upstream.requests][-1]


def test_queued_frames_of_all_lanes_hold_at_most_one_largest_frame(gateway, upstream, api_key, settings):
    make_provider(upstream)
    settings.SLUICE_WS_MAX_FRAME_BYTES = 1000
    upstream.hang = True
    padding = "x" * 300
    with open_socket(gateway, api_key) as ws:
        for _ in range(2):  # one runs (and hangs), one waits in lane a
            create(ws, padding, stream_id="a")
        for _ in range(2):  # the same in lane b
            create(ws, padding, stream_id="b")
        create(ws, padding, stream_id="b")  # a third waiting frame would pass the limit
        error = read(ws)
    assert error["error"]["code"] == "too_many_queued_requests" and error["stream_id"] == "b"


def test_lanes_share_one_upstream_socket_when_the_upstream_speaks_lanes(gateway, upstream, api_key):
    make_provider(upstream)
    upstream.ws_lanes = True
    upstream.text_deltas = 20
    upstream.event_delay = 0.02
    with open_socket(gateway, api_key) as ws:
        create(ws, "probe", stream_id="a", store=False)
        probe = until_terminal(ws, "a")[-1]
        create(ws, "left", stream_id="a", store=False, previous_response_id=probe["response"]["id"])
        create(ws, "right", stream_id="b", store=False)
        ended: dict[str, dict[str, Any]] = {}
        texts: dict[str, str] = {"a": "", "b": ""}
        order: list[str] = []  # the lane of each text delta, as they arrived
        while len(ended) < 2:
            event = read(ws)
            assert event.get("stream_id") in ("a", "b"), event
            if event["type"] == "response.output_text.delta":
                texts[event["stream_id"]] += event["delta"]
                order.append(event["stream_id"])
            if event["type"] in TERMINAL:
                ended[event["stream_id"]] = event
    assert texts == {"a": "echo: left", "b": "echo: right"}, "every event went to its own lane"
    assert {k: v["type"] for k, v in ended.items()} == {"a": "response.completed", "b": "response.completed"}
    assert upstream.ws_connections == 1, "one upstream socket for all lanes"
    frames = [r.body for r in upstream.requests if r.transport == "websocket"]
    assert [f.get("stream_id") for f in frames] == ["a", "a", "b"]
    assert frames[1]["previous_response_id"] == probe["response"]["id"] and frames[1]["input"] == "left"
    # Each lane streams for 0.4 s: run side by side, their deltas interleave (a wall-clock bound would
    # also fail on a loaded machine).
    last_a = len(order) - 1 - order[::-1].index("a")
    assert order.index("b") < last_a, f"the lanes ran one after the other: {''.join(order)}"
    opened = request_logs(3)[0]  # the turn that opened the shared socket says how long that took
    assert opened.ws_handshake_ms is not None and opened.upstream_ws_url == public_url(upstream.ws_url)


def test_a_lane_that_starts_while_the_probe_streams_gets_its_own_socket(gateway, upstream, api_key):
    """The first lane turn finds out whether the upstream speaks lanes; this one does not. A second lane
    starting once that is known, while the first still streams, opens a socket of its own and leaves
    the first lane's alone."""
    make_provider(upstream)
    upstream.text_deltas = 10
    upstream.event_delay = 0.02
    with open_socket(gateway, api_key) as ws:
        create(ws, "left", stream_id="a")
        first = read(ws)
        assert (first["type"], first["stream_id"]) == ("response.created", "a")
        create(ws, "right", stream_id="b")
        ended: dict[str, dict[str, Any]] = {}
        while len(ended) < 2:
            event = read(ws)
            if event["type"] in TERMINAL:
                ended[event["stream_id"]] = event
    assert {k: v["type"] for k, v in ended.items()} == {"a": "response.completed", "b": "response.completed"}
    assert upstream.ws_connections == 2


def test_a_lane_keeps_the_socket_that_found_the_upstream_speaks_no_lanes(gateway, upstream, api_key):
    """The lane whose first turn found out the upstream has no lanes keeps that socket as its own: its next
    turn continues on it with only the new input (the upstream's cache of the conversation stays warm),
    and nothing of the lanes protocol reaches an upstream that does not speak it."""
    make_provider(upstream)
    with open_socket(gateway, api_key) as ws:
        create(ws, "one", stream_id="a", store=False)
        first = until_terminal(ws, "a")[-1]
        create(ws, "two", stream_id="a", store=False, previous_response_id=first["response"]["id"])
        second = until_terminal(ws, "a")
    assert second[-1]["type"] == "response.completed" and second[-1]["stream_id"] == "a"
    assert all(event["stream_id"] == "a" for event in second), "every event of the lane carries its id"
    assert upstream.ws_connections == 1, "the lane's second turn opened another upstream socket"
    frames = [r.body for r in upstream.requests if r.transport == "websocket"]
    assert [f.get("previous_response_id") for f in frames] == [None, first["response"]["id"]]
    assert frames[1]["input"] == "two" and "stream_id" not in frames[1]


def test_interrupt_on_a_shared_lanes_socket(gateway, upstream, api_key):
    make_provider(upstream)
    upstream.ws_lanes = True
    slow(upstream)
    with open_socket(gateway, api_key) as ws:
        create(ws, "long", stream_id="a")
        raw = ws.recv(timeout=10)
        created = json.loads(raw)
        # The upstream's event carries its stream_id already: relayed as it came, not tagged twice.
        assert created["stream_id"] == "a" and raw.count('"stream_id"') == 1, raw
        interrupt = {
            "type": "response.interrupt",
            "response_id": created["response"]["id"],
            "mode": "discard_partial_items",
            "stream_id": "a",
        }
        ws.send(json.dumps(interrupt))
        events = until_terminal(ws, "a")
    assert events[-1]["type"] == "response.incomplete"
    assert "response.interrupt.accepted" in [e["type"] for e in events]
    assert [r.body for r in upstream.requests][1] == interrupt, "relayed untouched, stream_id and all"


@pytest.mark.parametrize("control", ["response.interrupt", "response.cancel"])
def test_an_upstream_without_interrupts_is_interrupted_by_the_gateway(gateway, upstream, api_key, control):
    provider = make_provider(upstream)
    slow(upstream)
    upstream.ws_controls = False
    with open_socket(gateway, api_key) as ws:
        events, took = interrupt_mid_stream(ws, control, store=True)
        kinds = [e["type"] for e in events]
        assert "error" not in kinds
        # Only an interrupt is acknowledged; a cancel goes straight to the end of the response.
        assert ("response.interrupt.accepted" in kinds) == (control == "response.interrupt")
        assert events[-1]["type"] == "response.incomplete" and took < 0.1
        response = events[-1]["response"]
        # The gateway wrote this response itself: still a whole response object, usage and all.
        rid = events[0]["response"]["id"]
        assert (response["id"], response["object"], response["model"]) == (rid, "response", "gpt-5.5")
        reason = "interrupted" if control == "response.interrupt" else "cancelled"
        assert response["incomplete_details"] == {"reason": reason}
        assert response["output"] == [] and "usage" in response
        # Stored, it can be continued later (over HTTP, or from another connection) on its provider.
        assert cache.get(response_key(rid)) == provider.id
        upstream.event_delay = 0
        upstream.text_deltas = 3
        create(ws, "next", store=False, previous_response_id=events[-1]["response"]["id"])
        assert until_terminal(ws)[-1]["type"] == "response.completed"
    assert upstream.ws_connections == 2, "the socket of the response that could not stop was dropped"
    last = [r.body for r in upstream.requests if r.transport == "websocket"][-1]
    assert "previous_response_id" not in last and [i.get("content") for i in last["input"]] == [
        "long",
        "next",
    ]


@pytest.mark.parametrize(
    "refusal",
    [
        None,  # the fake's default: param "type"
        {"type": "invalid_request_error", "code": "unsupported_event_type", "message": "No.", "param": None},
        {"type": "invalid_request_error", "code": "unknown_event_type", "message": "No.", "param": None},
    ],
    ids=["param-type", "unsupported_event_type", "unknown_event_type"],
)
def test_steer_an_upstream_does_not_know_fails_alone(gateway, upstream, api_key, refusal):
    make_provider(upstream)
    slow(upstream, deltas=50)  # a second in flight: the steer is answered long before the end
    upstream.ws_controls = False
    upstream.ws_unknown_event_error = refusal
    with open_socket(gateway, api_key) as ws:
        create(ws, "long")
        created = read(ws)
        ws.send(
            json.dumps(
                {"type": "response.steer", "previous_response_id": created["response"]["id"], "input": "x"}
            )
        )
        events = until_terminal(ws)
    kinds = [e["type"] for e in events]
    assert "error" not in kinds
    assert [e for e in events if e["type"] == "response.steer.failed"] == [
        {
            "type": "response.steer.failed",
            "steer": {"previous_response_id": created["response"]["id"], "input": "x"},
            "error": {
                "type": "invalid_request_error",
                "code": "steering_unavailable",
                "message": "The upstream does not support it.",
            },
        }
    ]
    assert events[-1]["type"] == "response.completed", "the response went on"
