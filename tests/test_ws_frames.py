"""Frame rules of the WebSocket consumer, driven by Channels' WebsocketCommunicator."""

import asyncio
import json
import re

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from tests.conftest import make_key, make_provider, request_logs

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(key: str | None, **scope_extra) -> WebsocketCommunicator:
    from config.asgi import application

    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    comm = WebsocketCommunicator(application, "/v1/responses", headers=headers)
    comm.scope.update(scope_extra)
    return comm


async def connected(key: str) -> WebsocketCommunicator:
    comm = communicator(key)
    ok, _ = await comm.connect()
    assert ok
    return comm


async def create(comm: WebsocketCommunicator, **fields) -> None:
    """Send a response.create frame for gpt-5.5 with ``fields``."""
    await comm.send_to(text_data=json.dumps({"type": "response.create", "model": "gpt-5.5", **fields}))


async def next_json(comm: WebsocketCommunicator, timeout: float = 5) -> dict:
    return json.loads(await comm.receive_from(timeout))


async def until_terminal(comm: WebsocketCommunicator) -> list[dict]:
    events = []
    while True:
        event = await next_json(comm)
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "response.incomplete", "error"):
            return events


@pytest.fixture(autouse=True)
async def _close_upstream_pool():
    """Each test has its own event loop; its upstream connection pool goes with it."""
    yield
    from proxy.upstream.http import close_session

    await close_session()


@pytest.fixture
def key(transactional_db):
    from tests.conftest import flush_request_log

    yield make_key()[1]
    flush_request_log()


@pytest.fixture
def http_provider(upstream, transactional_db):
    return make_provider(upstream, websocket_mode="never")


async def test_without_the_denial_extension_a_refusal_is_a_close(key):
    comm = communicator("sk-wrong")
    ok, code = await comm.connect()
    assert not ok and code == 1008


async def test_invalid_json_gets_an_error_frame_and_the_socket_stays_open(key, http_provider):
    comm = await connected(key)
    await comm.send_to(text_data="{oops")
    error = await next_json(comm)
    assert error["type"] == "error" and error["error"]["code"] == "invalid_json" and error["status"] == 400
    await create(comm, input="hi")
    events = await until_terminal(comm)
    assert events[-1]["type"] == "response.completed"
    await comm.disconnect()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "response.bogus"}, "unsupported_event_type"),
        ({"model": "gpt-5.5"}, "missing_event_type"),
        ({"type": "response.create", "input": "no model"}, "missing_required_parameter"),
        ({"type": "response.create", "model": "gpt-5.5", "background": True}, "unsupported_parameter"),
        ({"type": "response.create", "model": "gpt-5.5", "generate": "no"}, "invalid_type"),
    ],
)
async def test_invalid_frames_get_stable_error_codes(key, http_provider, frame, code):
    comm = await connected(key)
    await comm.send_to(text_data=json.dumps(frame))
    error = await next_json(comm)
    assert error["type"] == "error" and error["error"]["code"] == code
    assert await comm.receive_nothing(0.1)
    await comm.disconnect()


@pytest.mark.parametrize(
    ("stream_id", "accepted"),
    [("", False), (5, False), ([], False), ("x" * 65, False), ("x" * 64, True)],
    ids=["empty", "not-a-string", "an-array", "65-characters", "64-characters"],
)
async def test_a_stream_id_is_a_string_of_1_to_64_characters(key, http_provider, stream_id, accepted):
    comm = await connected(key)
    await create(comm, input="x", stream_id=stream_id)
    if accepted:
        assert (await until_terminal(comm))[-1]["type"] == "response.completed"
    else:
        error = await next_json(comm)
        on_lane = {"stream_id": stream_id} if isinstance(stream_id, str) else {}
        assert error == {
            "type": "error",
            "status": 400,
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_stream_id",
                "message": "'stream_id' must be a string of 1 to 64 characters.",
                "param": "stream_id",
            },
            **on_lane,
        }
        await create(comm, input="y")
        assert (await until_terminal(comm))[-1]["type"] == "response.completed", "the socket goes on"
    await comm.disconnect()


async def test_a_connection_has_at_most_32_lanes(key, http_provider):
    comm = await connected(key)
    for lane in range(32):  # local warm-ups: each lane finishes a turn at once
        await create(comm, generate=False, input="x", stream_id=f"lane-{lane}")
        assert [(await next_json(comm))["type"] for _ in range(2)] == [
            "response.created",
            "response.completed",
        ]
    await create(comm, generate=False, input="x", stream_id="one-too-many")
    assert await next_json(comm) == {
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": "websocket_stream_limit_reached",
            "message": "At most 32 lanes per connection.",
            "param": "stream_id",
        },
        "stream_id": "one-too-many",
    }
    await create(comm, input="y", stream_id="lane-0")
    assert (await until_terminal(comm))[-1]["type"] == "response.completed", "the lanes it has go on"
    await comm.disconnect()


@pytest.mark.parametrize(
    "fields", [{}, {"stream": True}, {"generate": True}], ids=["plain", "stream", "generate"]
)
async def test_a_turn_reaches_an_http_upstream_as_the_client_sent_it(key, http_provider, upstream, fields):
    """Untouched but for the WebSocket-only fields (``generate``) and ``stream``, which HTTP needs; a
    tolerated ``stream: true`` changes nothing."""
    comm = await connected(key)
    await create(comm, input="x", metadata={"k": "v"}, **fields)
    assert (await until_terminal(comm))[-1]["type"] == "response.completed"
    assert upstream.requests[-1].body == {
        "model": "gpt-5.5",
        "input": "x",
        "metadata": {"k": "v"},
        "stream": True,
    }
    await comm.disconnect()


async def test_binary_frame_gets_an_error_and_close_1003(key):
    comm = await connected(key)
    await comm.send_to(bytes_data=b"\x00\x01")
    error = await next_json(comm)
    assert error["error"]["code"] == "unsupported_frame"
    closed = await comm.receive_output(5)
    assert closed == {"type": "websocket.close", "code": 1003, "reason": "binary frames are not supported"}


async def test_frame_over_the_limit_is_closed_with_1009(key, settings):
    settings.SLUICE_WS_MAX_FRAME_BYTES = 100
    comm = await connected(key)
    await create(comm, input="x" * 200)
    closed = await comm.receive_output(5)
    assert closed["type"] == "websocket.close" and closed["code"] == 1009


async def test_silent_connection_is_closed_after_the_first_frame_deadline(key, settings):
    settings.SLUICE_WS_FIRST_FRAME_TIMEOUT = 0.5
    settings.SLUICE_WS_IDLE_TIMEOUT = 0.1  # the deadline is checked earlier than it falls: nothing yet
    comm = await connected(key)
    assert await comm.receive_nothing(0.3), "closed before its deadline"
    closed = await comm.receive_output(3)
    assert closed == {
        "type": "websocket.close",
        "code": 1000,
        "reason": "no response.create received in time",
    }


async def test_idle_connection_is_closed(key, http_provider, upstream, settings):
    """Closed once idle for SLUICE_WS_IDLE_TIMEOUT after its last frame; never during a turn, however long."""
    settings.SLUICE_WS_IDLE_TIMEOUT = 0.3
    upstream.event_delay = 0.05  # a turn of about half a second: the deadline is checked while it runs
    comm = await connected(key)
    await create(comm, input="x")
    assert (await until_terminal(comm))[-1]["type"] == "response.completed"
    await asyncio.sleep(0.2)
    await comm.send_to(text_data=json.dumps({"type": "response.processed", "response_id": "resp_x"}))
    assert await comm.receive_nothing(0.2), "closed before it was idle for the whole timeout"
    closed = await comm.receive_output(3)
    assert closed == {"type": "websocket.close", "code": 1000, "reason": "idle timeout"}


async def test_old_connection_answers_connection_limit_reached(key, http_provider, settings):
    settings.SLUICE_WS_MAX_AGE = 0.1
    comm = await connected(key)
    await asyncio.sleep(0.2)
    await create(comm, input="x")
    error = await next_json(comm)
    assert error["status"] == 400 and error["error"]["code"] == "websocket_connection_limit_reached"
    await comm.disconnect()


@pytest.mark.parametrize("lane", [None, "a"], ids=["default-lane", "named-lane"])
async def test_warmup_over_http_is_answered_like_the_service_and_can_be_chained(
    key, http_provider, upstream, lane
):
    on_lane = {"stream_id": lane} if lane else {}
    comm = await connected(key)
    await create(comm, generate=False, store=False, input=[{"role": "user", "content": "hi"}], **on_lane)
    created, completed = await next_json(comm), await next_json(comm)
    assert created["type"] == "response.created" and completed["type"] == "response.completed"
    assert completed["response"]["output"] == [] and completed["response"]["id"].startswith("resp_")
    assert upstream.http_requests == 0, "a warm-up never needs the upstream over HTTP"
    if lane is not None:  # a turn on another lane in between leaves this lane's response alone
        await create(comm, store=False, input="elsewhere")
        assert (await until_terminal(comm))[-1]["type"] == "response.completed"
    await create(
        comm,
        store=False,
        previous_response_id=completed["response"]["id"],
        input=[{"role": "user", "content": "again"}],
        **on_lane,
    )
    events = await until_terminal(comm)
    assert events[-1]["type"] == "response.completed"
    sent = upstream.requests[-1].body
    assert [i["content"] for i in sent["input"]] == ["hi", "again"] and "previous_response_id" not in sent
    await comm.disconnect()


WARMUP_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 0,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 0,
}
TOOLS = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]


SET_FIELDS = {
    "instructions": "be brief",
    "tools": TOOLS,
    "tool_choice": "none",
    "parallel_tool_calls": False,
    "store": False,
}


@pytest.mark.parametrize(
    ("fields", "echoed"),
    [
        (
            {},
            {
                "instructions": None,
                "tools": [],
                "tool_choice": "auto",
                "parallel_tool_calls": True,
                "store": True,
            },
        ),
        (SET_FIELDS, SET_FIELDS),
    ],
    ids=["defaults", "set"],
)
async def test_a_local_warmup_answers_the_response_object_the_service_would(
    key, http_provider, fields, echoed
):
    comm = await connected(key)
    await create(comm, generate=False, input="hi", metadata={"k": "v"}, **fields)
    created, completed = await next_json(comm), await next_json(comm)
    assert (created["sequence_number"], completed["sequence_number"]) == (0, 1)
    assert created["response"]["status"] == "in_progress" and created["response"]["usage"] is None
    response = completed["response"]
    assert response["id"] == created["response"]["id"] and isinstance(response["created_at"], int)
    assert re.fullmatch(r"resp_[0-9a-f]{48}", response["id"]), "an id shaped like the service's"
    assert {k: v for k, v in response.items() if k not in ("id", "created_at")} == {
        "object": "response",
        "status": "completed",
        "model": "gpt-5.5",
        "output": [],
        "error": None,
        "incomplete_details": None,
        "metadata": {"k": "v"},
        "usage": WARMUP_USAGE,
        **echoed,
    }
    await comm.disconnect()
    # Its request-log row: answered here, nothing upstream, under the id the client got.
    (row,) = await sync_to_async(request_logs)(1)
    assert (row.status, row.upstream_transport, row.response_id) == (200, "", response["id"])


async def test_unknown_previous_response_with_store_false_is_not_found(key, http_provider, upstream):
    comm = await connected(key)
    await create(comm, store=False, previous_response_id="resp_abc", input=[])
    error = await next_json(comm)
    assert error == {
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": "previous_response_not_found",
            "message": "Previous response with id 'resp_abc' not found.",
            "param": "previous_response_id",
        },
    }
    assert upstream.http_requests == 0
    await comm.disconnect()


async def test_turns_run_in_order_with_a_bounded_queue(key, http_provider, upstream, settings):
    settings.SLUICE_WS_QUEUE_LIMIT = 2
    upstream.event_delay = 0.05
    comm = await connected(key)
    for word in ("a", "b", "c", "d"):
        await create(comm, input=word)
    seen = []
    refused = 0
    while len(seen) + refused < 4:
        event = await next_json(comm, timeout=10)
        if event["type"] == "error":
            assert event["error"]["code"] == "too_many_queued_requests"
            refused += 1
        elif event["type"] == "response.completed":
            seen.append(event["response"]["output"][0]["content"][0]["text"])
    # The worker may or may not have taken "a" off the queue before "c" arrived.
    assert refused in (1, 2) and seen == ["echo: a", "echo: b", "echo: c"][: 4 - refused]
    # A refused turn leaves its request-log row too, under its key.
    from proxy.models import ApiKey

    rows = await sync_to_async(request_logs)(4)
    key_id = await sync_to_async(lambda: ApiKey.objects.get().pk)()
    assert (
        sorted((r.status, r.error_code, r.client_transport, r.api_key_id) for r in rows)
        == [(200, "", "websocket", key_id)] * (4 - refused)
        + [(429, "too_many_queued_requests", "websocket", key_id)] * refused
    )
    await comm.disconnect()


async def test_a_connection_remembers_which_of_its_last_256_responses_finished(key, http_provider, upstream):
    """An interrupt for a response that finished on this connection gets ``response_already_completed``;
    the connection remembers the last 256 of them (bounded memory) and keeps serving after that."""
    comm = await connected(key)
    ids = []
    for _ in range(257):  # local warm-ups: finished responses without an upstream
        await create(comm, generate=False, store=False, input="hi")
        await next_json(comm)  # response.created
        completed = await next_json(comm)
        assert completed["type"] == "response.completed", completed
        ids.append(completed["response"]["id"])
    for response_id, code in [
        (ids[0], "response_not_found"),  # the oldest was forgotten
        (ids[1], "response_already_completed"),
        (ids[-1], "response_already_completed"),
    ]:
        interrupt = {"type": "response.interrupt", "response_id": response_id}
        await comm.send_to(text_data=json.dumps(interrupt))
        failed = await next_json(comm)
        assert (failed["type"], failed["response_id"], failed["error"]["code"]) == (
            "response.interrupt.failed",
            response_id,
            code,
        )
    await create(comm, store=False, previous_response_id=ids[-1], input="go on")
    assert (await until_terminal(comm))[-1]["type"] == "response.completed"
    assert upstream.http_requests == 1
    await comm.disconnect()
