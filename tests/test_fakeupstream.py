"""The fake upstream speaks the Responses API well enough for the real openai SDK, over HTTP and WebSocket."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import TERMINAL, sdk_turn
from tests.fakeupstream import FakeUpstream, function_call_item, message_item, usage_for

MODEL = "gpt-5.5"


@pytest.fixture(scope="module")
def running() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def fake(running: FakeUpstream) -> Iterator[FakeUpstream]:
    running.reset()
    yield running
    assert running.wait_for(lambda: running.open_ws == 0), "a WebSocket connection leaked"


@pytest.fixture
def client(fake: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(api_key=fake.api_key, base_url=fake.base_url, max_retries=0, timeout=10)


def turn(conn: Any, **fields: Any) -> list[Any]:
    """Send one response.create on an SDK connection and read events up to the end of the turn."""
    return sdk_turn(conn, model=MODEL, **fields)


def raw_turn(ws: Any, frame: dict[str, Any] | str) -> list[dict[str, Any]]:
    ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    events = []
    while True:
        events.append(json.loads(ws.recv(timeout=5)))
        if events[-1]["type"] in TERMINAL:
            return events


def auth(fake: FakeUpstream) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.api_key}"}


# HTTP


def test_sdk_streaming_text(fake: FakeUpstream, client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="hello there", stream=True))

    types = [event.type for event in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == "echo: hello there"
    done = events[-1].response
    assert done.status == "completed"
    assert done.model == MODEL
    assert done.output_text == "echo: hello there"
    assert done.id.startswith("resp_") and done.output[0].id.startswith("msg_")
    expected = usage_for([{"type": "message", "role": "user", "content": "hello there"}], False, 3)
    assert done.usage.model_dump(exclude_none=True) == expected
    recorded = fake.requests[-1]
    assert (recorded.transport, recorded.method, recorded.path) == ("http", "POST", "/v1/responses")
    assert recorded.body == {"model": MODEL, "input": "hello there", "stream": True}
    assert recorded.headers["authorization"] == f"Bearer {fake.api_key}"


def test_raw_sse_framing(fake: FakeUpstream) -> None:
    body = {"model": MODEL, "input": "x", "stream": True}
    with httpx.stream("POST", fake.url("/v1/responses"), json=body, headers=auth(fake)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    blocks = [block for block in text.split("\n\n") if block]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line == f"event: {json.loads(data_line.removeprefix('data: '))['type']}"
    assert "[DONE]" not in text


def test_sdk_non_stream_and_text_deltas(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.text_deltas = 5
    response = client.responses.create(
        model="gpt-5-mini",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    )
    assert response.output_text == "echo: hi"
    assert response.model == "gpt-5-mini"
    assert response.usage is not None and response.usage.output_tokens == 5
    assert response.usage.total_tokens == response.usage.input_tokens + 5


def test_function_call_then_stored_continuation(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.responder = lambda body: [function_call_item("get_weather", '{"city":"Oslo"}', "call_1")]
    first = client.responses.create(model=MODEL, input="weather?", tools=[])
    call = first.output[0]
    assert (call.type, call.name, call.arguments, call.call_id) == (
        "function_call",
        "get_weather",
        '{"city":"Oslo"}',
        "call_1",
    )
    assert call.id.startswith("fc_")

    seen: list[list[dict[str, Any]]] = []
    fake.responder = lambda body: seen.append(body["input"]) or [message_item("ok")]
    output = [{"type": "function_call_output", "call_id": "call_1", "output": "12C"}]
    second = client.responses.create(model=MODEL, previous_response_id=first.id, input=output)

    assert second.output_text == "ok"
    assert seen[0][0]["content"] == "weather?" and seen[0][1]["type"] == "function_call"
    assert seen[0][2] == output[0]
    assert second.usage is not None and second.usage.input_tokens_details.cached_tokens > 0
    assert fake.requests[-1].body == {"model": MODEL, "previous_response_id": first.id, "input": output}

    fake.responder = None
    echoed = client.responses.create(model=MODEL, previous_response_id=first.id, input=output)
    assert echoed.output_text == "tool said: 12C"


def test_a_tool_output_without_its_call_is_refused_like_the_service(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    orphan = [{"type": "function_call_output", "call_id": "call_nowhere", "output": "12C"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=orphan)
    assert caught.value.param == "input" and "call_nowhere" in caught.value.message
    with client.responses.connect() as conn:
        error = turn(conn, input=orphan)[-1]
        assert error.type == "error" and error.status == 400 and "call_nowhere" in error.error.message


@pytest.mark.parametrize("kind", ["response.failed", "error"])
def test_fail_event_ends_the_turn_and_stores_nothing(fake: FakeUpstream, client: openai.OpenAI, kind) -> None:
    fake.fail_event, fake.fail_message = kind, "planted failure"
    events = list(client.responses.create(model=MODEL, input="x", stream=True))
    assert [e.type for e in events] == ["response.created", "response.in_progress", kind]
    assert "planted failure" in events[-1].model_dump_json()
    with client.responses.connect() as conn:
        events = turn(conn, input="y", store=False)
        assert events[-1].type == kind
        if kind == "error":
            assert events[-1].status == 500
        fake.fail_event = None
        after = turn(conn, input="z", store=False, previous_response_id=events[0].response.id)[-1]
        assert after.type == "error" and after.error.code == "previous_response_not_found"
    assert fake._kept == {}


def test_omit_terminal_ends_the_stream_cleanly_without_a_terminal_event(fake: FakeUpstream) -> None:
    fake.omit_terminal = True
    body = {"model": MODEL, "input": "x", "stream": True}
    response = httpx.post(fake.url("/v1/responses"), json=body, headers=auth(fake), timeout=5)
    assert response.status_code == 200 and "response.output_text.done" in response.text
    assert "response.completed" not in response.text


def test_store_false_is_not_continuable_over_http(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="a", store=False)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, previous_response_id=first.id, input="b")
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id"


def test_invalid_bodies_are_400(fake: FakeUpstream, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(input="no model")  # type: ignore[call-overload]
    assert caught.value.code == "missing_required_parameter"
    bad = httpx.post(fake.url("/v1/responses"), json={"model": MODEL, "generate": False}, headers=auth(fake))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_parameter"


def test_wrong_key_is_401_on_http_and_handshake(fake: FakeUpstream) -> None:
    wrong = openai.OpenAI(api_key="sk-wrong", base_url=fake.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.responses.create(model=MODEL, input="x")
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(InvalidStatus) as refused:
        wrong.responses.connect().enter()
    assert refused.value.response.status_code == 401
    assert (fake.ws_connections, fake.ws_handshakes_refused) == (0, 1)


def test_side_endpoints(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.models = ["gpt-5.5", "gpt-x"]
    assert [model.id for model in client.models.list()] == ["gpt-5.5", "gpt-x"]
    stored = client.responses.create(model=MODEL, input="keep me")
    assert client.responses.retrieve(stored.id).output_text == "echo: keep me"
    items = client.responses.input_items.list(stored.id)
    assert [item.type for item in items.data] == ["message"]
    count = client.responses.input_tokens.count(model=MODEL, input="four words right here")
    assert (
        count.input_tokens
        == usage_for([{"type": "message", "role": "user", "content": "four words right here"}], False, 0)[
            "input_tokens"
        ]
    )
    compacted = client.responses.compact(model=MODEL, input="long history")
    assert compacted.object == "response.compaction" and compacted.output[-1].type == "compaction"
    assert client.responses.cancel(stored.id).status == "cancelled"
    client.responses.delete(stored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(stored.id)
    assert httpx.get(fake.url("/v1/nothing"), headers=auth(fake)).status_code == 404
    assert fake.http_requests == len(fake.requests) == 10


@pytest.mark.parametrize(
    ("status", "error"), [(500, openai.InternalServerError), (429, openai.RateLimitError)]
)
def test_http_fail_status(
    fake: FakeUpstream, client: openai.OpenAI, status: int, error: type[Exception]
) -> None:
    fake.http_fail_status = status
    with pytest.raises(error):
        client.responses.create(model=MODEL, input="x", stream=True)
    fake.http_fail_status = None
    assert client.responses.create(model=MODEL, input="x").status == "completed"


def test_http_drop_after_events_cuts_the_stream(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.drop_after_events = 4
    received = []
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        for event in client.responses.create(model=MODEL, input="x", stream=True):
            received.append(event.type)
    assert received == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model=MODEL, input="x")
    assert fake._kept == {}


def test_http_hang_never_answers(fake: FakeUpstream) -> None:
    fake.hang = True
    impatient = openai.OpenAI(api_key=fake.api_key, base_url=fake.base_url, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.responses.create(model=MODEL, input="x")
    assert fake.requests[-1].body == {"model": MODEL, "input": "x"}


def test_a_client_leaving_mid_stream_ends_the_stream(fake: FakeUpstream) -> None:
    fake.text_deltas, fake.event_delay = 200, 0.05
    body = {"model": MODEL, "input": "x", "stream": True}
    with httpx.stream("POST", fake.url("/v1/responses"), json=body, headers=auth(fake)) as response:
        for line in response.iter_lines():
            if "output_text.delta" in line:
                assert fake.open_http_streams == 1
                break
    assert fake.wait_for(lambda: fake.open_http_streams == 0, timeout=2)
    with ws_connect(fake.ws_url, additional_headers=auth(fake)) as ws:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "x"}))
        while "output_text.delta" not in ws.recv(timeout=5):
            pass
        assert fake.open_ws == 1
    assert fake.wait_for(lambda: fake.open_ws == 0, timeout=2)


def test_event_delay_paces_events(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.event_delay = 0.05
    started = time.monotonic()
    events = list(client.responses.create(model=MODEL, input="x", stream=True))
    assert time.monotonic() - started >= 0.05 * (len(events) - 1)


def test_responder_failure_keeps_the_server_alive(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.responder = lambda body: 1 / 0  # type: ignore[assignment,return-value]
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input="x")
    with client.responses.connect() as conn:
        assert turn(conn, input="x")[-1].status == 500
    fake.responder = None
    assert client.responses.create(model=MODEL, input="x").output_text == "echo: x"


# WebSocket mode


def test_ws_two_turns_chained_with_store_false_on_one_connection(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    with client.responses.connect() as conn:
        first = turn(conn, input="one", store=False)
        assert first[-1].type == "response.completed"
        assert first[-1].response.output_text == "echo: one"
        assert [e.sequence_number for e in first] == list(range(len(first)))
        second = turn(conn, input="two", store=False, previous_response_id=first[-1].response.id)
        assert second[-1].type == "response.completed"
        assert second[-1].response.output_text == "echo: two"
        assert second[-1].response.usage.input_tokens_details.cached_tokens > 0
    assert fake.ws_connections == 1
    frames = [r for r in fake.requests if r.transport == "websocket"]
    assert [(r.connection_id, r.body["type"]) for r in frames] == [(1, "response.create")] * 2
    assert frames[1].body["previous_response_id"] == first[-1].response.id
    assert frames[0].headers["authorization"] == f"Bearer {fake.api_key}"
    assert fake.stored(first[-1].response.id) is None


def test_ws_previous_response_not_found_on_a_fresh_connection(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    with client.responses.connect() as conn:
        response_id = turn(conn, input="one", store=False)[-1].response.id
    with client.responses.connect() as conn:
        error = turn(conn, input="two", store=False, previous_response_id=response_id)[-1]
        assert error.type == "error" and error.status == 400
        assert error.error.code == "previous_response_not_found"
        assert error.error.message == f"Previous response with id '{response_id}' not found."
        assert turn(conn, input="again")[-1].type == "response.completed"  # the socket stays open
    assert fake.ws_connections == 2


def test_ws_stored_response_continues_on_another_connection(client: openai.OpenAI) -> None:
    with client.responses.connect() as conn:
        response_id = turn(conn, input="one")[-1].response.id
    with client.responses.connect() as conn:
        assert (
            turn(conn, input="two", previous_response_id=response_id)[-1].response.output_text == "echo: two"
        )


def test_ws_failed_turn_evicts_the_cached_response(fake: FakeUpstream, client: openai.OpenAI) -> None:
    with client.responses.connect() as conn:
        response_id = turn(conn, input="one", store=False)[-1].response.id
        fake.ws_error_status = 500
        assert turn(conn, input="boom")[-1].status == 500
        fake.ws_error_status = None
        error = turn(conn, input="two", store=False, previous_response_id=response_id)[-1]
        assert error.type == "error" and error.error.code == "previous_response_not_found"


def test_ws_warmup_with_generate_false(fake: FakeUpstream) -> None:
    headers = {**auth(fake), "OpenAI-Beta": "responses_websockets=2026-02-06"}
    with ws_connect(fake.ws_url, additional_headers=headers) as ws:
        warmup = raw_turn(ws, {"type": "response.create", "model": MODEL, "input": "hi", "generate": False})
        assert [e["type"] for e in warmup] == ["response.created", "response.completed"]
        assert warmup[-1]["response"]["output"] == []
        frame = {"type": "response.create", "model": MODEL, "input": [], "store": False}
        real = raw_turn(ws, {**frame, "previous_response_id": warmup[-1]["response"]["id"]})
        assert real[-1]["response"]["output"][0]["content"][0]["text"] == "echo: hi"
    assert fake.requests[-1].headers["openai-beta"] == "responses_websockets=2026-02-06"


def test_ws_bad_frames_answer_errors_and_keep_the_socket(fake: FakeUpstream) -> None:
    with ws_connect(fake.ws_url, additional_headers=auth(fake)) as ws:
        assert raw_turn(ws, "not json")[-1]["error"]["code"] == "invalid_json"
        assert raw_turn(ws, {"type": "session.update"})[-1]["status"] == 400
        assert raw_turn(ws, {"type": "response.create"})[-1]["error"]["param"] == "model"
        assert raw_turn(ws, {"type": "response.create", "model": MODEL})[-1]["type"] == "response.completed"
    assert fake.requests[0].body is None and fake.requests[0].raw == "not json"


def test_ws_refuse_status_fails_the_handshake(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.ws_refuse_status = 426
    with pytest.raises(InvalidStatus) as refused:
        client.responses.connect().enter()
    assert refused.value.response.status_code == 426
    assert json.loads(refused.value.response.body)["error"]["type"]
    assert (fake.ws_connections, fake.ws_handshakes_refused) == (0, 1)
    with pytest.raises(InvalidStatus) as missing:
        ws_connect(fake.url("/v1/other").replace("http", "ws"), additional_headers=auth(fake))
    assert missing.value.response.status_code == 404


def test_ws_drop_after_events_closes_without_a_close_frame(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.drop_after_events = 3
    received = []
    with client.responses.connect() as conn:
        conn.response.create(model=MODEL, input="x")
        with pytest.raises(ConnectionClosedError) as closed:
            for event in conn:
                received.append(event.type)
    assert received == ["response.created", "response.in_progress", "response.output_item.added"]
    assert closed.value.rcvd is None  # no close frame: an abrupt drop
    assert fake.wait_for(lambda: fake.open_ws == 0)


def test_ws_hang_sends_nothing(fake: FakeUpstream) -> None:
    fake.hang = True
    with ws_connect(fake.ws_url, additional_headers=auth(fake)) as ws:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "x"}))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
        assert fake.open_ws == 1
    assert fake.requests[-1].connection_id == 1


def test_reset_clears_counters_switches_and_store(fake: FakeUpstream, client: openai.OpenAI) -> None:
    response_id = client.responses.create(model=MODEL, input="x").id
    fake.hang, fake.http_fail_status, fake.drop_after_events = True, 500, 1
    fake.reset()
    assert (fake.requests, fake.http_requests, fake.hang, fake.http_fail_status) == ([], 0, False, None)
    assert fake.drop_after_events is None and fake.stored(response_id) is None


# lifecycle


def test_stop_is_clean_even_with_open_sockets_and_hung_requests() -> None:
    before = set(threading.enumerate())
    upstream = FakeUpstream(name="lifecycle").start()
    port = upstream.port
    ws = ws_connect(upstream.ws_url, additional_headers=auth(upstream))
    upstream.hang = True

    outcome: list[object] = []

    def post() -> None:
        try:
            answer = httpx.post(upstream.url("/v1/responses"), json={"model": MODEL}, headers=auth(upstream))
            outcome.append(answer.status_code)
        except httpx.HTTPError as error:
            outcome.append(error)

    hung = threading.Thread(target=post)
    hung.start()
    assert upstream.wait_for(lambda: upstream.http_requests == 1 and upstream.open_ws == 1)

    started = time.monotonic()
    upstream.stop()
    assert time.monotonic() - started < 5
    hung.join(5)
    assert not hung.is_alive() and outcome and outcome[0] != 200
    ws.close()
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
