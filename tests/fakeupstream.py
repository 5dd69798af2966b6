"""A fake OpenAI Responses API upstream for the test suite.

A real uvicorn server on 127.0.0.1, in a background thread with its own event loop, that speaks the
Responses API over HTTP (JSON and SSE) and WebSocket mode on `/v1/responses` the way the real service
does (see docs PROTOCOL.md): bearer auth, `previous_response_id` continuation from stored responses and,
on a socket, from the connection-local cache of its most recent response, also with `store: false`.

Failure switches are plain attributes, settable from the test thread while the server runs:
- `http_fail_status`: every `POST /v1/responses` answers that status with an OpenAI error body.
- `http_raw_body`: every `POST /v1/responses` answers these bytes as its JSON body, with `http_fail_status`
  (200 when unset): an error object or a response written as the test wants it (escapes, odd fields).
- `ws_error_status`: every WebSocket `response.create` answers an `error` frame carrying that status.
- `ws_refuse_status`: WebSocket upgrades are refused with that HTTP status.
- `hang`: HTTP `POST /v1/responses` never answers; WebSocket turns never get an event.
- `head_delay`: seconds HTTP `POST /v1/responses` waits before its status line (a non-streamed answer is
  only sent once the whole response is made).
- `drop_after_events`: after that many events the connection is cut abruptly. HTTP: the transport is
  closed mid-body (chunked body never terminated; a non-streaming answer is cut half-way whatever the
  number). WebSocket: the TCP connection is closed without a close frame (the client sees 1006).
- `cut_json_body`: a non-streamed `POST /v1/responses` answer (and `GET /v1/responses/{id}`) stops half-way
  through its JSON. `"drop"`: the Content-Length of the whole body, then the connection is closed;
  `"chunked"`: a chunked body never terminated; `"short_length"`: a Content-Length of half the body, the
  message ending properly (a well-formed HTTP answer whose JSON is cut).
- `event_delay`: seconds slept between two events of a turn.
- `stall_after_events`: after that many events a streamed turn goes silent (the upstream still working)
  until it is stopped (an interrupt or cancel on the WebSocket) or its client leaves.
- `fail_event`: `"response.failed"` or `"error"`: a turn stops after `response.in_progress` and ends with
  that event, carrying `fail_message` (code `server_error`; the WebSocket `error` frame says status 500).
  The failed response is neither stored nor cached on the socket.
- `events_per_chunk`: HTTP SSE events written together in one body chunk, as a fast upstream's arrive.
- `ignore_stream`: `stream: true` is ignored: the answer is the JSON response, not an event stream (an
  upstream or proxy that cannot stream).
- `omit_terminal`: a turn's stream ends cleanly without its terminal event (HTTP: the body is terminated
  properly; WebSocket: the turn just never ends).
- `ws_turn_limit`: a WebSocket connection that has served that many turns answers the next
  `response.create` with the service's `websocket_connection_limit_reached` error (its 60 minutes).
- `ws_controls`: off, the WebSocket answers interrupt, cancel and steer as an upstream without them
  does: an `error` frame refusing the event type (the turn in flight goes on).
- `ws_unknown_event_error`: the `error` object of that refusal (and of any event type the fake does not
  know). Upstreams word it differently: by default `param: "type"`; some say only its code
  (`unsupported_event_type`, `unknown_event_type`).
- `ws_lanes`: the WebSocket speaks `stream_id` lanes (turns of different lanes run concurrently on one
  connection, their events echo the `stream_id`); off, a `stream_id` is accepted and ignored.
- `usage_override`: fields that replace those of the usage every turn reports (e.g. negative token counts,
  as a faulty upstream sends).
- `handshake_headers`: headers added to every WebSocket accept and streamed HTTP answer (e.g.
  `x-codex-turn-state`).

WebSocket client events besides `response.create`, as the service answers them while a turn runs:
`response.interrupt` (acknowledgement, `response.output_item.interrupted` per partial item, then
`response.incomplete` with reason `interrupted`; the connection can continue from it), `response.cancel`
(the same without acknowledgement), `response.steer` (`response.steer.accepted`); an interrupt for a
response not in flight gets the non-terminal `response.interrupt.failed`.
- `escape_key`: streamed events (SSE and WebSocket) write the fake's own `api_key`, wherever it appears,
  with a JSON `\\u` escape for every character (the same string to a JSON reader).
- `error_event`: a dict sent as the turn's second event (after `response.created`), ending the turn;
  e.g. an `error` event whose message echoes the upstream's own key, as some proxies do.

Leak checks: `open_ws` counts open sockets, `open_http_streams` the `POST /v1/responses` still being
answered; a paced stream notices a client that left and stops. Usage is deterministic, see `usage_for`.
HTTP bodies are validated like the real service: `model` is required and the WebSocket-only fields
`type`, `generate` and `stream_id` are unknown parameters. Like the service, a `function_call_output`
whose `call_id` names no `function_call` earlier in the conversation is a 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Responder = Callable[[dict[str, Any]], list[dict[str, Any]]]

DEFAULT_MODELS: tuple[str, ...] = ("gpt-5.5", "gpt-5-mini", "gpt-5-nano")
WS_ONLY_FIELDS: tuple[str, ...] = ("type", "generate", "stream_id")
log = logging.getLogger(__name__)


@dataclass
class Recorded:
    """One HTTP request or one WebSocket frame the upstream received."""

    transport: str  # "http" or "websocket"
    path: str
    headers: dict[str, str]  # lower-cased names; for WS frames, the handshake's headers
    body: dict[str, Any] | None  # parsed JSON body / frame; None when absent or not a JSON object
    connection_id: int | None  # WebSocket connection number (1-based) for WS frames
    method: str = "GET"  # HTTP method; "GET" (the upgrade) for WS frames
    raw: str = ""  # the body or frame text exactly as received


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def message_item(text: str) -> dict[str, Any]:
    """An assistant message output item, for a `responder`."""
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def function_call_item(name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    """A function_call output item, for a `responder`."""
    return {
        "type": "function_call",
        "name": name,
        "arguments": arguments,
        "call_id": call_id or new_id("call"),
    }


def openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def usage_for(full_input: list[dict[str, Any]], continued: bool, output_tokens: int) -> dict[str, Any]:
    """The usage the fake reports: input tokens from the JSON size of the full input, half of them cached
    on a continuation, one output token per delta event."""
    input_tokens = len(json.dumps(full_input)) // 4 + 1
    cached = input_tokens // 2 if continued else 0
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def as_items(value: Any) -> list[dict[str, Any]]:
    """The `input` field as a list of items (a bare string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value)


def item_text(value: Any) -> str:
    """The text of a message's content or a tool output: a string or a list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(part.get("text", "") for part in value if isinstance(part, dict))
    return ""


def default_responder(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = as_items(body.get("input"))
    if items and items[-1].get("type") == "function_call_output":
        return [message_item(f"tool said: {item_text(items[-1].get('output'))}")]
    users = [item for item in items if item.get("role") == "user"]
    return [message_item(f"echo: {item_text(users[-1].get('content')) if users else ''}")]


def split_text(text: str, pieces: int) -> list[str]:
    pieces = max(pieces, 1)
    bounds = [len(text) * i // pieces for i in range(pieces + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(pieces)]


def finish_item(item: dict[str, Any]) -> dict[str, Any]:
    """A responder's item as the service returns it: with an id, a status and the full part shapes."""
    kind = item.get("type")
    if kind == "message":
        content = item.get("content", [])
        if isinstance(content, str):
            content = [{"type": "output_text", "text": content}]
        parts = [{"type": "output_text", "annotations": [], "logprobs": [], **part} for part in content]
        return {"id": new_id("msg"), "status": "completed", "role": "assistant", **item, "content": parts}
    if kind == "function_call":
        return {"id": new_id("fc"), "status": "completed", "call_id": new_id("call"), "arguments": "", **item}
    return {"id": new_id("item"), **item}


def item_events(index: int, item: dict[str, Any], text_deltas: int) -> tuple[list[dict[str, Any]], int]:
    """The stream events of one output item, and how many delta events (output tokens) they hold."""
    at = {"item_id": item["id"], "output_index": index}
    events: list[dict[str, Any]] = []
    deltas = 0
    if item["type"] == "message":
        added = {**item, "status": "in_progress", "content": []}
        events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        for content_index, part in enumerate(item["content"]):
            where = {**at, "content_index": content_index}
            text = part.get("text", "")
            empty = {**part, "text": ""}
            events.append({"type": "response.content_part.added", **where, "part": empty})
            for delta in split_text(text, text_deltas):
                events.append({"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []})
                deltas += 1
            events.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
            events.append({"type": "response.content_part.done", **where, "part": part})
    elif item["type"] == "function_call":
        added = {**item, "status": "in_progress", "arguments": ""}
        events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        arguments = item["arguments"]
        events.append({"type": "response.function_call_arguments.delta", **at, "delta": arguments})
        deltas += 1
        events.append(
            {
                "type": "response.function_call_arguments.done",
                **at,
                "name": item.get("name"),
                "arguments": arguments,
            }
        )
    else:
        events.append({"type": "response.output_item.added", "output_index": index, "item": item})
    events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events, deltas


def response_object(
    body: dict[str, Any],
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": body.get("service_tier") or "default",
        "store": body.get("store") is not False,
        "temperature": 1.0,
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def previous_not_found(previous_id: str) -> dict[str, Any]:
    message = f"Previous response with id '{previous_id}' not found."
    return openai_error(
        message, "invalid_request_error", "previous_response_not_found", "previous_response_id"
    )


def status_error(status: int) -> dict[str, Any]:
    if status == 429:
        return openai_error("Rate limit reached for requests.", "requests", "rate_limit_exceeded")
    if status >= 500:
        return openai_error("The server had an error while processing your request.", "server_error", None)
    return openai_error(f"Upstream refused the request (status {status}).", "invalid_request_error", None)


@dataclass
class Kept:
    """A finished response with what a continuation needs: its full input and its output."""

    response: dict[str, Any]
    full_input: list[dict[str, Any]]
    output: list[dict[str, Any]]


@dataclass
class Turn:
    kept: Kept
    events: list[dict[str, Any]]


class PreviousNotFound(Exception):
    pass


class NoToolCall(Exception):
    """A function_call_output without its function_call: the service refuses the turn."""

    def error(self) -> dict[str, Any]:
        message = f"No tool call found for function call output with call_id {self}."
        return openai_error(message, "invalid_request_error", None, "input")


class DropConnection(Exception):
    """Raised inside the app so uvicorn closes the transport mid-response, like a crashed upstream."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DropConnection))


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _parse_object(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_json(send: Send, status: int, payload: dict[str, Any], cut: str | None = None) -> None:
    """An answer with a JSON body; ``cut`` (see ``FakeUpstream.cut_json_body``) stops it half-way."""
    data = json.dumps(payload).encode()
    length = {None: len(data), "drop": len(data), "short_length": len(data) // 2, "chunked": None}[cut]
    headers = [(b"content-type", b"application/json"), (b"x-request-id", new_id("req").encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if cut is None:
        return await send({"type": "http.response.body", "body": data})
    await send(
        {"type": "http.response.body", "body": data[: len(data) // 2], "more_body": cut != "short_length"}
    )
    if cut != "short_length":
        raise DropConnection("cut_json_body")


class FakeUpstream:
    def __init__(self, api_key: str = "sk-upstream-test", name: str = "fake") -> None:
        self.api_key = api_key
        self.name = name
        self.models: list[str] = list(DEFAULT_MODELS)
        self.requests: list[Recorded] = []
        self.port = 0
        self._kept: dict[str, Kept] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.open_ws = 0  # WebSocket connections currently open
        self.open_http_streams = 0  # POST /v1/responses still being answered (streaming, paced or hung)
        self.reset()

    def reset(self) -> None:
        """Forget requests, counters, stored responses, and set every switch back to normal."""
        self.requests.clear()
        self._kept.clear()
        self.ws_connections = 0
        self.ws_handshakes_refused = 0
        self.http_requests = 0
        self.http_peers: set[tuple] = set()  # distinct client (host, port): one per TCP connection
        self.http_fail_status: int | None = None
        self.http_raw_body: bytes | None = None
        self.ws_error_status: int | None = None
        self.ws_refuse_status: int | None = None
        self.hang = False
        self.head_delay = 0.0
        self.drop_after_events: int | None = None
        self.cut_json_body: str | None = None
        self.event_delay = 0.0
        self.error_event: dict[str, Any] | None = None
        self.escape_key = False
        self.text_deltas = 3
        self.responder: Responder | None = None
        self.ws_turn_limit: int | None = None
        self.handshake_headers: dict[str, str] = {}
        self.ws_lanes = False
        self.ws_controls = True
        self.ws_unknown_event_error: dict[str, Any] | None = None
        self.fail_event: str | None = None
        self.fail_message = "The server had an error while processing your request."
        self.omit_terminal = False
        self.events_per_chunk = 1
        self.ignore_stream = False
        self.stall_after_events: int | None = None
        self.usage_override: dict[str, Any] | None = None

    # lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        logger = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _QuietDrops) for f in logger.filters):
            logger.addFilter(_QuietDrops())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            log_config=None,
            log_level="warning",
            ws="websockets-sansio",
            ws_max_size=64 * 1024 * 1024,
            ws_ping_interval=None,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"fakeupstream-{self.name}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake upstream {self.name!r} did not start")
            time.sleep(0.01)
        return self

    def _run(self, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        try:
            asyncio.run(serve())
        finally:
            sock.close()

    def stop(self) -> None:
        thread, server, loop, stopping = self._thread, self._server, self._loop, self._stopping
        if thread is None or server is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop closed in between
                pass
        server.should_exit = True
        thread.join(10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        self._thread = self._server = self._loop = self._stopping = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` (e.g. `lambda: fake.open_ws == 0`) until true or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stored(self, response_id: str) -> dict[str, Any] | None:
        kept = self._kept.get(response_id)
        return kept.response if kept else None

    # the protocol

    def _authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.api_key}"

    def _body_problem(self, body: dict[str, Any], websocket: bool) -> dict[str, Any] | None:
        if not websocket:
            for key in WS_ONLY_FIELDS:
                if key in body:
                    return openai_error(
                        f"Unknown parameter: '{key}'.", "invalid_request_error", "unknown_parameter", key
                    )
        if not isinstance(body.get("model"), str) or not body["model"]:
            return openai_error(
                "Missing required parameter: 'model'.",
                "invalid_request_error",
                "missing_required_parameter",
                "model",
            )
        return None

    def _previous(self, body: dict[str, Any], cached: Kept | None) -> Kept | None:
        previous_id = body.get("previous_response_id")
        if not previous_id:
            return None
        if cached is not None and cached.response["id"] == previous_id:
            return cached
        kept = self._kept.get(previous_id)
        if kept is None:
            raise PreviousNotFound(previous_id)
        return kept

    def _turn(self, body: dict[str, Any], previous: Kept | None, websocket: bool = False) -> Turn:
        full_input = (previous.full_input + previous.output if previous else []) + as_items(body.get("input"))
        calls = {item.get("call_id") for item in full_input if item.get("type") == "function_call"}
        for item in full_input:
            if item.get("type") == "function_call_output" and item.get("call_id") not in calls:
                raise NoToolCall(item.get("call_id"))
        response_id, created_at = new_id("resp"), int(time.time())
        started = response_object(body, response_id, created_at, "in_progress", [], None)
        if body.get("generate") is False:
            usage = usage_for(full_input, previous is not None, 0)
            done = response_object(body, response_id, created_at, "completed", [], usage)
            events = [{"type": "response.created", "response": started}]
        else:
            responder = self.responder or default_responder
            output = [finish_item(item) for item in responder({**body, "input": full_input})]
            events = [
                {"type": "response.created", "response": started},
                {"type": "response.in_progress", "response": started},
            ]
            output_tokens = 0
            for index, item in enumerate(output):
                more, deltas = item_events(index, item, self.text_deltas)
                events += more
                output_tokens += deltas
            usage = usage_for(full_input, previous is not None, output_tokens)
            usage = {**usage, **(self.usage_override or {})}
            done = response_object(body, response_id, created_at, "completed", output, usage)
        events.append({"type": "response.completed", "response": done})
        if self.fail_event is not None:
            events = [*events[:2], self._failure(self.fail_event, started, websocket)]
        if self.omit_terminal:
            events.pop()
        for number, event in enumerate(events):
            event["sequence_number"] = number
        return Turn(Kept(done, full_input, done["output"]), events)

    def _failure(self, kind: str, started: dict[str, Any], websocket: bool) -> dict[str, Any]:
        error = {"type": "server_error", "code": "server_error", "message": self.fail_message, "param": None}
        if kind == "response.failed":
            failed = {
                **started,
                "status": "failed",
                "error": {"code": "server_error", "message": self.fail_message},
            }
            return {"type": "response.failed", "response": failed}
        if websocket:
            return {"type": "error", "status": 500, "error": error}
        return {"type": "error", "code": "server_error", "message": self.fail_message, "param": None}

    def _keep(self, body: dict[str, Any], kept: Kept) -> None:
        if self.fail_event is not None or self.omit_terminal:
            return
        if body.get("store") is not False:
            self._kept[kept.response["id"]] = kept

    async def _pace(
        self,
        events: list[dict[str, Any]],
        emit: Callable[[dict[str, Any]], Awaitable[None]],
        gone: asyncio.Future[None] | None = None,
    ) -> bool:
        """Emit the events with the configured delay; False when the client left first. Raises
        DropConnection when `drop_after_events` cuts the turn short."""
        for number, event in enumerate(events):
            if self.drop_after_events is not None and number >= self.drop_after_events:
                raise DropConnection("drop_after_events")
            if self.stall_after_events is not None and number >= self.stall_after_events:
                await (gone if gone is not None else asyncio.get_running_loop().create_future())
                return False
            if number and self.event_delay:
                if gone is None:
                    await asyncio.sleep(self.event_delay)
                else:
                    await asyncio.wait([gone], timeout=self.event_delay)
            if gone is not None and gone.done():
                return False
            if number == 1 and self.error_event is not None:
                await emit({**self.error_event, "sequence_number": number})
                return True
            await emit(event)
        return True

    def dumps(self, event: dict[str, Any]) -> str:
        text = json.dumps(event)
        if self.escape_key and self.api_key:
            text = text.replace(self.api_key, "".join(f"\\u{ord(c):04x}" for c in self.api_key))
        return text

    # ASGI

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path, headers = scope["method"], scope["path"], _headers(scope)
        raw = (await _read_body(receive)).decode("utf-8", "replace")
        body = _parse_object(raw)
        self.requests.append(Recorded("http", path, headers, body, None, method, raw))
        self.http_peers.add(tuple(scope.get("client") or ()))
        if path.startswith("/v1/"):
            self.http_requests += 1
        if not self._authorized(headers):
            # Like the service, the message names the key it was given: the gateway must scrub it.
            presented = headers.get("authorization", "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {presented}. You can find your API key at https://platform.openai.com."
            return await _send_json(
                send, 401, openai_error(message, "invalid_request_error", "invalid_api_key")
            )
        parts = path.rstrip("/").split("/")[1:]
        if method == "POST" and parts == ["v1", "responses"]:
            return await self._create(body, receive, send)
        if method == "GET" and parts == ["v1", "models"]:
            data = [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}
                for m in self.models
            ]
            return await _send_json(send, 200, {"object": "list", "data": data})
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "models"] and parts[2] in self.models:
            model = {"id": parts[2], "object": "model", "created": 1_700_000_000, "owned_by": "openai"}
            return await _send_json(send, 200, model)
        if method == "POST" and parts == ["v1", "responses", "input_tokens"]:
            tokens = usage_for(as_items((body or {}).get("input")), False, 0)["input_tokens"]
            return await _send_json(send, 200, {"object": "response.input_tokens", "input_tokens": tokens})
        if method == "POST" and parts == ["v1", "responses", "compact"]:
            return await _send_json(send, 200, self._compacted(body or {}))
        if len(parts) in (3, 4) and parts[:2] == ["v1", "responses"]:
            return await self._stored_route(method, parts[2], parts[3:], send)
        message = f"Invalid URL ({method} {path})"
        await _send_json(send, 404, openai_error(message, "invalid_request_error", None))

    async def _create(self, body: dict[str, Any] | None, receive: Receive, send: Send) -> None:
        self.open_http_streams += 1
        gone = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await self._answer(body, gone, send)
        finally:
            gone.cancel()
            self.open_http_streams -= 1

    async def _answer(self, body: dict[str, Any] | None, gone: asyncio.Future[None], send: Send) -> None:
        if self.hang:
            assert self._stopping is not None
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait([gone, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if gone.done():
                return
            raise DropConnection("hung request released at shutdown")
        if self.head_delay:
            await asyncio.sleep(self.head_delay)
        if self.http_raw_body is not None:
            headers = [(b"content-type", b"application/json")]
            await send(
                {"type": "http.response.start", "status": self.http_fail_status or 200, "headers": headers}
            )
            return await send({"type": "http.response.body", "body": self.http_raw_body})
        if self.http_fail_status is not None:
            return await _send_json(send, self.http_fail_status, status_error(self.http_fail_status))
        if body is None:
            message = "We could not parse the JSON body of your request."
            return await _send_json(send, 400, openai_error(message, "invalid_request_error", None))
        problem = self._body_problem(body, websocket=False)
        if problem is not None:
            return await _send_json(send, 400, problem)
        try:
            turn = self._turn(body, self._previous(body, None))
        except PreviousNotFound as missing:
            return await _send_json(send, 400, previous_not_found(str(missing)))
        except NoToolCall as missing:
            return await _send_json(send, 400, missing.error())
        except Exception:
            log.exception("fake upstream responder failed")
            return await _send_json(send, 500, status_error(500))
        if body.get("stream") and not self.ignore_stream:
            headers = [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                *[(k.encode(), v.encode()) for k, v in self.handshake_headers.items()],
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})

            held: list[bytes] = []  # events sent together, `events_per_chunk` at a time

            async def emit(event: dict[str, Any]) -> None:
                held.append(f"event: {event['type']}\ndata: {self.dumps(event)}\n\n".encode())
                if len(held) >= self.events_per_chunk or event is turn.events[-1]:
                    await send({"type": "http.response.body", "body": b"".join(held), "more_body": True})
                    held.clear()

            if not await self._pace(turn.events, emit, gone):
                return
            await send({"type": "http.response.body", "body": b""})
        elif self.drop_after_events is not None:
            data = json.dumps(turn.kept.response).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
            raise DropConnection("drop_after_events")
        else:
            await _send_json(send, 200, turn.kept.response, self.cut_json_body)
        self._keep(body, turn.kept)

    def _compacted(self, body: dict[str, Any]) -> dict[str, Any]:
        items = as_items(body.get("input"))
        users = [item for item in items if item.get("role") == "user"]
        compaction = {"type": "compaction", "id": new_id("cmp"), "encrypted_content": secrets.token_hex(16)}
        return {
            "id": new_id("resp"),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": [*users, compaction],
            "usage": usage_for(items, False, 1),
        }

    async def _stored_route(self, method: str, response_id: str, rest: list[str], send: Send) -> None:
        kept = self._kept.get(response_id)
        if kept is None:
            message = f"Response with id '{response_id}' not found."
            return await _send_json(send, 404, openai_error(message, "invalid_request_error", None))
        if method == "GET" and not rest:
            return await _send_json(send, 200, kept.response, self.cut_json_body)
        if method == "DELETE" and not rest:
            del self._kept[response_id]
            return await _send_json(send, 200, {"id": response_id, "object": "response", "deleted": True})
        if method == "POST" and rest == ["cancel"]:
            return await _send_json(send, 200, {**kept.response, "status": "cancelled"})
        if method == "GET" and rest == ["input_items"]:
            data = [{"id": new_id("msg"), **item} for item in kept.full_input]
            page = {"object": "list", "data": data, "has_more": False}
            page |= {"first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
            return await _send_json(send, 200, page)
        message = f"Invalid URL ({method} /v1/responses/{response_id}/{'/'.join(rest)})"
        await _send_json(send, 404, openai_error(message, "invalid_request_error", None))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        if (await receive())["type"] != "websocket.connect":
            return
        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            self.ws_handshakes_refused += 1
            status, payload = refusal
            data = json.dumps(payload).encode()
            response_headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ]
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": response_headers}
            )
            await send({"type": "websocket.http.response.body", "body": data})
            return
        extra = [(k.encode(), v.encode()) for k, v in self.handshake_headers.items()]
        await send({"type": "websocket.accept", "headers": extra})
        self.ws_connections += 1
        self.open_ws += 1
        try:
            await self._ws_session(self.ws_connections, scope["path"], headers, receive, send)
        except (DropConnection, OSError):  # OSError: uvicorn's ClientDisconnected, the client left mid-turn
            pass
        finally:
            self.open_ws -= 1
        # Returning without a close frame makes uvicorn drop the TCP connection: that is the abrupt
        # close `drop_after_events` wants; every other exit already went through a close handshake.

    def _refusal(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        if path.rstrip("/") != "/v1/responses":
            return 404, openai_error(f"Invalid URL (GET {path})", "invalid_request_error", None)
        if not self._authorized(headers):
            presented = headers.get("authorization", "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {presented}."
            return 401, openai_error(message, "invalid_request_error", "invalid_api_key")
        if self.ws_refuse_status is not None:
            return self.ws_refuse_status, status_error(self.ws_refuse_status)
        return None

    async def _ws_session(
        self, connection_id: int, path: str, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        session = _WsSession(self, connection_id, path, headers, send)
        received: asyncio.Future[Message] | None = None
        try:
            while True:
                if received is None:
                    received = asyncio.ensure_future(receive())
                waiting: set[asyncio.Future[Any]] = {received}
                if session.running is not None:
                    waiting.add(session.running)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if session.running is not None and session.running.done():
                    running, session.running = session.running, None
                    running.result()  # DropConnection ends the connection abruptly
                if not received.done():
                    continue
                message, received = received.result(), None
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                if raw is None:
                    raw = (message.get("bytes") or b"").decode("utf-8", "replace")
                await session.frame(raw)
        finally:
            if received is not None:
                received.cancel()
            if session.running is not None:
                session.running.cancel()


class _WsSession:
    """One upstream WebSocket connection of the fake: turns in order, and the client events that act on
    the turn in flight (interrupt, cancel, steer) while it streams. With `ws_lanes`, turns with a
    `stream_id` run concurrently, one lane each, and their events carry the `stream_id`."""

    def __init__(
        self, fake: FakeUpstream, connection_id: int, path: str, headers: dict[str, str], send: Send
    ) -> None:
        self.fake, self.connection_id, self.path, self.headers = fake, connection_id, path, headers
        self.send = send
        self.cached: dict[str | None, Kept] = {}  # the last response of each lane (None: no stream_id)
        self.running: asyncio.Task[None] | None = None  # the turn without a lane
        self.lane_tasks: dict[str, asyncio.Task[None]] = {}
        self.turns = 0
        self.live: dict[str | None, dict[str, Any]] = {}  # turns in flight: id, stop, partial and done items

    async def emit(self, event: dict[str, Any], lane: str | None = None) -> None:
        if lane is not None:
            event = {**event, "stream_id": lane}
        await self.send({"type": "websocket.send", "text": self.fake.dumps(event)})

    async def fail(self, status: int, error: dict[str, Any], lane: str | None = None) -> None:
        self.cached.pop(lane, None)  # a failed turn evicts the lane's cached response
        await self.emit({"type": "error", "status": status, **error}, lane)

    def lane_of(self, frame: dict[str, Any]) -> str | None:
        lane = frame.get("stream_id")
        return lane if self.fake.ws_lanes and isinstance(lane, str) else None

    def continued(self, frame: dict[str, Any], lane: str | None) -> Kept | None:
        """The cached response a frame continues: its lane's, or with lanes any lane's (lineage)."""
        previous = frame.get("previous_response_id")
        candidates = [self.cached.get(lane)] + (list(self.cached.values()) if self.fake.ws_lanes else [])
        for kept in candidates:
            if kept is not None and kept.response["id"] == previous:
                return kept
        return self.cached.get(lane)

    async def frame(self, raw: str) -> None:
        fake = self.fake
        frame = _parse_object(raw)
        fake.requests.append(
            Recorded("websocket", self.path, self.headers, frame, self.connection_id, "GET", raw)
        )
        if fake.hang:
            return
        if frame is None:
            await self.fail(
                400, openai_error("Invalid JSON in message.", "invalid_request_error", "invalid_json")
            )
            return
        kind = frame.get("type")
        lane = self.lane_of(frame)
        if kind in ("response.interrupt", "response.cancel", "response.steer") and fake.ws_controls:
            await self.control(kind, frame)
            return
        if kind != "response.create":
            message_text = f"Unsupported event type '{frame.get('type')}'."
            refusal = openai_error(message_text, "invalid_request_error", "invalid_value", "type")
            if fake.ws_unknown_event_error is not None:
                refusal = {"error": fake.ws_unknown_event_error}
            await self.fail(400, refusal, lane)
            return
        earlier = self.running if lane is None else self.lane_tasks.get(lane)
        if earlier is not None and not earlier.done():  # turns of one lane run in order
            await earlier
        if fake.ws_turn_limit is not None and self.turns >= fake.ws_turn_limit:
            message = (
                "Responses websocket connection limit reached (60 minutes). "
                "Create a new websocket connection to continue."
            )
            await self.fail(
                400,
                openai_error(message, "invalid_request_error", "websocket_connection_limit_reached"),
                lane,
            )
            return
        if fake.ws_error_status is not None:
            await self.fail(fake.ws_error_status, status_error(fake.ws_error_status), lane)
            return
        problem = fake._body_problem(frame, websocket=True)
        if problem is not None:
            await self.fail(400, problem, lane)
            return
        try:
            turn = fake._turn(frame, fake._previous(frame, self.continued(frame, lane)), websocket=True)
        except PreviousNotFound as missing:
            await self.fail(400, previous_not_found(str(missing)), lane)
            return
        except NoToolCall as missing:
            await self.fail(400, missing.error(), lane)
            return
        except Exception:
            log.exception("fake upstream responder failed")
            await self.fail(500, status_error(500), lane)
            return
        self.turns += 1
        task = asyncio.ensure_future(self.stream(frame, turn, lane))
        if lane is None:
            self.running = task
        else:
            self.lane_tasks[lane] = task

    async def stream(self, frame: dict[str, Any], turn: Turn, lane: str | None) -> None:
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rid = turn.kept.response["id"]
        live = self.live[lane] = {"id": rid, "stop": stop, "partial": {}, "done": [], "sent": 0}

        async def emit(event: dict[str, Any]) -> None:
            item = event.get("item") or {}
            if event["type"] == "response.output_item.added":
                live["partial"][item.get("id")] = event["output_index"]
            elif event["type"] == "response.output_item.done":
                live["partial"].pop(item.get("id"), None)
                live["done"].append(item)
            live["sent"] += 1
            await self.emit(event, lane)

        try:
            finished = await self.fake._pace(turn.events, emit, stop)
        finally:
            self.live.pop(lane, None)
        if finished:
            if self.fake.fail_event is None:
                self.cached[lane] = turn.kept
            else:  # a failed turn evicts, too
                self.cached.pop(lane, None)
            self.fake._keep(frame, turn.kept)
            return
        kind, discard = stop.result()
        sequence = live["sent"]
        if kind == "response.interrupt":
            accepted = {
                "type": "response.interrupt.accepted",
                "response_id": rid,
                "sequence_number": sequence,
            }
            await self.emit(accepted, lane)
            sequence += 1
        if discard:
            for item_id, index in live["partial"].items():
                interrupted = {"response_id": rid, "item_id": item_id, "output_index": index}
                await self.emit(
                    {"type": "response.output_item.interrupted", **interrupted, "sequence_number": sequence},
                    lane,
                )
                sequence += 1
        reason = "interrupted" if kind == "response.interrupt" else "cancelled"
        usage = usage_for(turn.kept.full_input, frame.get("previous_response_id") is not None, live["sent"])
        response = {
            **turn.kept.response,
            "status": "incomplete",
            "incomplete_details": {"reason": reason},
            "output": live["done"],
            "usage": usage,
        }
        await self.emit(
            {"type": "response.incomplete", "sequence_number": sequence, "response": response}, lane
        )
        kept = Kept(response, turn.kept.full_input, live["done"])
        self.cached[lane] = kept
        self.fake._keep(frame, kept)

    async def control(self, kind: str, frame: dict[str, Any]) -> None:
        target = frame.get("previous_response_id") if kind == "response.steer" else frame.get("response_id")
        lane = self.lane_of(frame)
        found = [
            (key, live)
            for key, live in self.live.items()
            if not live["stop"].done() and (live["id"] == target if target else key == lane)
        ]
        if kind == "response.steer":
            if found:
                key, live = found[0]
                steer = {"id": new_id("steer"), "previous_response_id": live["id"]}
                accepted = {
                    "type": "response.steer.accepted",
                    "sequence_number": live["sent"],
                    "steer": steer,
                }
                await self.emit(accepted, key)
            else:
                error = {
                    "type": "invalid_request_error",
                    "code": "response_not_found",
                    "message": "Nothing to steer.",
                }
                steer = {"previous_response_id": target}
                await self.emit({"type": "response.steer.failed", "steer": steer, "error": error}, lane)
            return
        if not found:
            if kind == "response.interrupt":
                error = {"code": "response_already_completed", "message": "The response is not in progress."}
                await self.emit(
                    {"type": "response.interrupt.failed", "response_id": target, "error": error}, lane
                )
            return
        discard = kind == "response.interrupt" and frame.get("mode") == "discard_partial_items"
        found[0][1]["stop"].set_result((kind, discard))
