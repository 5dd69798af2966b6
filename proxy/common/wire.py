"""The Responses API wire format: request validation, error bodies and frames, event types, the SSE codec."""

import json
from typing import Any

TERMINAL_TYPES = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})


class WireError(Exception):
    """A request the gateway refuses, with what the client needs to know, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type

    def error_object(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.code, "message": self.message, "param": self.param}

    def http_body(self) -> bytes:
        return json.dumps({"error": self.error_object()}).encode()

    def ws_frame(self) -> str:
        """The service's WebSocket error frame: Codex reads ``status`` as the HTTP status it stands for."""
        return json.dumps({"type": "error", "status": self.status, "error": self.error_object()})

    def sse_event(self, sequence_number: int = 0) -> bytes:
        data = json.dumps(
            {
                "type": "error",
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "sequence_number": sequence_number,
            }
        )
        return b"event: error\ndata: " + data.encode() + b"\n\n"


def parse_body(raw: bytes | str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from None
    except RecursionError:
        # json's parser recurses per nesting level: a body nested deeper than the interpreter allows.
        raise WireError(400, "invalid_json", "The body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise WireError(400, "invalid_json", "The body must be a JSON object.")
    return body


# How the service names a JSON value's type in its errors ("but got an integer instead").
_JSON_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}

# The top-level fields the gateway reads itself (input, previous_response_id, store, stream, background,
# metadata, max_output_tokens), and a few others whose type is plain, in the order the service reports
# them: their JSON types, and how the service's error words the type it expected. A null passes (the
# field is then unset), and every field not named here passes as it is: what the upstream accepts is its
# own to judge (client_metadata, include, tool_choice, ...).
_FIELD_TYPES: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("input", (str, list), "one of a string or array of input items"),
    ("previous_response_id", (str,), "a string"),
    ("tools", (list,), "an array of tools"),
    ("metadata", (dict,), "a metadata object"),
    ("text", (dict,), "an object"),
    ("temperature", (int, float), "a decimal"),
    ("top_p", (int, float), "a decimal"),
    ("parallel_tool_calls", (bool,), "a boolean"),
    ("stream", (bool,), "a boolean"),
    ("background", (bool,), "a boolean"),
    ("max_output_tokens", (int,), "an integer"),
    ("max_tool_calls", (int,), "an integer"),
    ("reasoning", (dict,), "an object"),
    ("user", (str,), "a string"),
    ("safety_identifier", (str,), "a string"),
    ("prompt_cache_key", (str,), "a string"),
    ("instructions", (str,), "a string"),
    ("store", (bool,), "a boolean"),
)


def invalid_type(name: str, expected: str, value: object) -> WireError:
    got = _JSON_TYPES.get(type(value), "another type")
    message = f"Invalid type for '{name}': expected {expected}, but got {got} instead."
    return WireError(400, "invalid_type", message, name)


def check_types(body: dict[str, Any]) -> None:
    """Refuse a body whose typed fields (``_FIELD_TYPES``) hold a value of another type, as the service
    does, before the gateway reads them or an upstream is asked: a dict lookup per field."""
    for name, kinds, expected in _FIELD_TYPES:
        value = body.get(name)
        if value is None or (isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))):
            continue  # JSON's true is no integer, nor a decimal
        raise invalid_type(name, expected, value)


def require_model(body: dict[str, Any]) -> str:
    """The body's model, once the body holds one and its typed fields are of their types."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        # As the service words it: a model of the wrong type is not a missing one.
        raise invalid_type("model", "a string", model)
    if not isinstance(model, str) or not model.strip():
        raise WireError(400, "missing_required_parameter", "Missing required parameter: 'model'.", "model")
    check_types(body)
    return model


def validate_create_frame(frame: dict[str, Any]) -> str:
    """Check a WebSocket ``response.create`` frame; return its model."""
    kind = frame.get("type")
    if kind != "response.create":
        raise WireError(
            400,
            "unsupported_event_type" if isinstance(kind, str) else "missing_event_type",
            f"Unsupported client event type {kind!r}: send 'response.create'."
            if isinstance(kind, str)
            else "Every client event needs a 'type'; send 'response.create'.",
            "type",
        )
    model = require_model(frame)
    if frame.get("background"):
        raise WireError(
            400,
            "unsupported_parameter",
            "'background' is not supported in WebSocket mode; use HTTP for background responses.",
            "background",
        )
    generate = frame.get("generate", True)
    if not isinstance(generate, bool):  # the WebSocket's own field: an HTTP body never carries it
        raise invalid_type("generate", "a boolean", generate)
    return model


def event_type(data: str) -> str:
    """The ``type`` of an event's JSON without parsing it whole (it leads every event the service sends)."""
    if data.startswith('{"type":"'):
        end = data.find('"', 9)
        if end > 0:
            return data[9:end]
    try:
        kind = json.loads(data).get("type")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return kind if isinstance(kind, str) else ""


class Event:
    """One upstream event: its type, its JSON text, and (from SSE) its original block for untouched
    relaying. The text of an SSE event is decoded only when something reads it (a WebSocket client,
    the terminal event); SSE-to-SSE relaying never needs it."""

    __slots__ = ("type", "_data", "sse")

    def __init__(self, type: str, data: str | None = None, sse: bytes | None = None) -> None:
        self.type = type
        self._data = data
        self.sse = sse

    @property
    def data(self) -> str:
        if self._data is None:
            self._data = _data_of(self.sse or b"")
        return self._data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and (self.type, self.data, self.sse) == (
            other.type,
            other.data,
            other.sse,
        )

    def __repr__(self) -> str:
        return f"Event({self.type!r})"

    def as_sse(self) -> bytes:
        if self.sse is not None:
            return self.sse
        return b"event: " + self.type.encode() + b"\ndata: " + self.data.encode() + b"\n\n"


class SSEDecoder:
    """Incremental server-sent-events parser that keeps each event's bytes for untouched relaying."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        events: list[Event] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            event = _parse_block(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:]
        return events


def _data_of(block: bytes) -> str:
    data = [
        line[6:] if line[5:6] == b" " else line[5:]
        for line in block.split(b"\n")
        if line.startswith(b"data:")
    ]
    return (data[0] if len(data) == 1 else b"\n".join(data)).decode()


def _parse_block(block: bytes) -> Event | None:
    if block.startswith(b"event:"):
        # The service's shape, "event: <type>" then data: the type is all the relay needs.
        end = block.find(b"\n")
        if end > 0 and block.find(b"\ndata:", end - 1) >= 0:
            return Event(block[6:end].strip().decode(), None, block + b"\n\n")
    kind = ""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            kind = (line[7:] if line[6:7] == b" " else line[6:]).decode()
    if not data:
        return None
    text = (data[0] if len(data) == 1 else b"\n".join(data)).decode()
    if text == "[DONE]":
        return None
    return Event(type=kind or event_type(text), data=text, sse=block + b"\n\n")
