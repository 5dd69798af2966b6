"""A fast fake Responses API upstream for the benchmark: ``python -m bench.upstream --port 0``.

One raw asyncio server (uvloop) on 127.0.0.1 serves both transports on ``/v1/responses``, like the real
service: ``POST`` with ``"stream": true`` answers SSE (chunked, one chunk per event) and ``GET`` with
``Upgrade: websocket`` switches to WebSocket mode (one text frame per event, ``previous_response_id``
continuation from the connection's last response, also with ``store: false``).

The model name sets the size of the answer: ``bench-N`` streams N events (N >= 8): ``response.created``,
``output_item.added``, ``content_part.added``, N - 7 ``output_text.delta``, the three ``done`` events and
``response.completed``. Events are rendered once per size; a turn only stamps its response id in, and each
event is written as it would be streamed (its own write), so the upstream costs little CPU per turn.
"""

import argparse
import asyncio
import json
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any

import uvloop

from bench import wsframe

API_KEY = "bench-upstream-key"
ID_MARK = "resp_00000000000000000000000000000000000000000000000000"
MODEL_SIZE = re.compile(r"bench-(\d+)$")
WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
MIN_EVENTS = 8
compact = json.JSONEncoder(separators=(",", ":")).encode


def response_object(model: str, status: str, output: list[Any], usage: dict[str, Any] | None) -> dict:
    return {
        "id": ID_MARK,
        "object": "response",
        "created_at": 1767225600,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium", "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "metadata": {},
    }


def event_texts(model: str, count: int) -> list[str]:
    """The JSON text of each event of a ``count``-event answer, ``ID_MARK`` standing for the response id."""
    deltas = [WORDS[i % len(WORDS)] for i in range(count - 7)]
    text = "".join(deltas)
    item_id = "msg_" + "7" * 48
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    usage = {
        "input_tokens": 320,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(deltas),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 320 + len(deltas),
    }
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response_object(model, "in_progress", [], None)},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
        *(
            {
                "type": "response.output_text.delta",
                **where,
                "delta": delta,
                "logprobs": [],
                "obfuscation": "x7Qe",
            }
            for delta in deltas
        ),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response_object(model, "completed", [item], usage)},
    ]
    return [
        compact({"type": event.pop("type"), "sequence_number": number, **event})
        for number, event in enumerate(events)
    ]


@dataclass(frozen=True)
class Rendered:
    """One answer size, pre-encoded for both transports; ``None`` marks an event that carries the id."""

    texts: list[str]
    sse_chunks: list[bytes | None]
    ws_frames: list[bytes | None]


def sse_chunk(text: str) -> bytes:
    kind = text[9 : text.index('"', 9)]
    block = f"event: {kind}\ndata: {text}\n\n".encode()
    return b"%x\r\n%b\r\n" % (len(block), block)


def render(model: str, count: int) -> Rendered:
    texts = event_texts(model, count)
    return Rendered(
        texts=texts,
        sse_chunks=[None if ID_MARK in t else sse_chunk(t) for t in texts],
        ws_frames=[
            None if ID_MARK in t else wsframe.encode(wsframe.TEXT, t.encode(), masked=False) for t in texts
        ],
    )


_rendered: dict[str, Rendered] = {}


def rendered_for(model: str) -> Rendered | None:
    found = _rendered.get(model)
    if found is None:
        match = MODEL_SIZE.match(model)
        if match is None or int(match.group(1)) < MIN_EVENTS:
            return None
        found = _rendered[model] = render(model, int(match.group(1)))
    return found


def error_json(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"type": "invalid_request_error", "code": code, "message": message, "param": param}


class Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 with keep-alive until it upgrades to WebSocket."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.frames: wsframe.FrameReader | None = None
        self.last_response_id: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.frames is not None:
            self.websocket_data(data)
            return
        self.buffer += data
        while self.frames is None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = bytes(self.buffer[:head_end]).decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < head_end + 4 + length:
                return
            body = bytes(self.buffer[head_end + 4 : head_end + 4 + length])
            del self.buffer[: head_end + 4 + length]
            self.http_request(method, path, headers, body)
        if self.buffer:
            rest, self.buffer = bytes(self.buffer), bytearray()
            self.websocket_data(rest)

    # ----- HTTP -----

    def http_answer(self, status: str, body: dict[str, Any]) -> None:
        raw = compact(body).encode()
        head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
        self.transport.write(head.encode() + raw)  # type: ignore[union-attr]

    def http_request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        if headers.get("authorization") != f"Bearer {API_KEY}":
            self.http_answer("401 Unauthorized", {"error": error_json("invalid_api_key", "Bad key.")})
        elif path != "/v1/responses":
            self.http_answer("404 Not Found", {"error": error_json("not_found", f"No route {path}.")})
        elif method == "GET" and headers.get("upgrade", "").lower() == "websocket":
            accept = wsframe.accept_key(headers.get("sec-websocket-key", "").encode()).decode()
            self.transport.write(  # type: ignore[union-attr]
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                f"sec-websocket-accept: {accept}\r\n\r\n".encode()
            )
            self.frames = wsframe.FrameReader()
        elif method == "POST":
            self.http_stream(body)
        else:
            self.http_answer("405 Method Not Allowed", {"error": error_json("method_not_allowed", method)})

    def http_stream(self, body: bytes) -> None:
        request = json.loads(body)
        rendered = rendered_for(request.get("model", ""))
        if rendered is None or request.get("stream") is not True:
            message = "Use model bench-N (N >= 8) with stream: true."
            self.http_answer("400 Bad Request", {"error": error_json("unsupported", message)})
            return
        write = self.transport.write  # type: ignore[union-attr]
        write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"x-request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        response_id = new_response_id()
        for chunk, text in zip(rendered.sse_chunks, rendered.texts, strict=True):
            write(chunk if chunk is not None else sse_chunk(text.replace(ID_MARK, response_id)))
        write(b"0\r\n\r\n")

    # ----- WebSocket -----

    def websocket_data(self, data: bytes) -> None:
        assert self.frames is not None and self.transport is not None
        for frame in self.frames.feed(data):
            if frame.opcode == wsframe.TEXT:
                self.websocket_turn(frame.payload)
            elif frame.opcode == wsframe.PING:
                self.transport.write(wsframe.encode(wsframe.PONG, frame.payload, masked=False))
            elif frame.opcode == wsframe.CLOSE:
                self.transport.write(wsframe.encode(wsframe.CLOSE, frame.payload[:2], masked=False))
                self.transport.close()
                return

    def websocket_error(self, code: str, message: str, param: str | None = None) -> None:
        self.last_response_id = None
        error = {"type": "error", "status": 400, "error": error_json(code, message, param)}
        self.transport.write(wsframe.encode(wsframe.TEXT, compact(error).encode(), masked=False))  # type: ignore[union-attr]

    def websocket_turn(self, payload: bytes) -> None:
        request = json.loads(payload)
        rendered = rendered_for(request.get("model", ""))
        if request.get("type") != "response.create" or rendered is None:
            self.websocket_error("unsupported", "Send response.create with model bench-N (N >= 8).")
            return
        previous = request.get("previous_response_id")
        if previous is not None and previous != self.last_response_id:
            message = f"Previous response with id '{previous}' not found."
            self.websocket_error("previous_response_not_found", message, "previous_response_id")
            return
        write = self.transport.write  # type: ignore[union-attr]
        response_id = new_response_id()
        for frame, text in zip(rendered.ws_frames, rendered.texts, strict=True):
            if frame is None:
                frame = wsframe.encode(
                    wsframe.TEXT, text.replace(ID_MARK, response_id).encode(), masked=False
                )
            write(frame)
        self.last_response_id = response_id


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(25)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, "127.0.0.1", port, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port, printed on stdout")
    args = parser.parse_args(argv)
    try:
        uvloop.run(serve(args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
