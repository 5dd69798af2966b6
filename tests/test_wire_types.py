"""Fields of the wrong type are refused as the service refuses them (400 ``invalid_type`` naming the field),
over HTTP and WebSocket, before the gateway reads them or an upstream is asked; what real clients send
passes."""

import json

import pytest

from proxy.common.wire import TERMINAL_TYPES, WireError, require_model, validate_create_frame
from tests.conftest import make_provider, request_logs
from tests.helpers import open_socket, post

WRONG = [
    ("stream", "yes", "Invalid type for 'stream': expected a boolean, but got a string instead."),
    ("store", "no", "Invalid type for 'store': expected a boolean, but got a string instead."),
    ("background", 1, "Invalid type for 'background': expected a boolean, but got an integer instead."),
    (
        "previous_response_id",
        5,
        "Invalid type for 'previous_response_id': expected a string, but got an integer instead.",
    ),
    (
        "input",
        5,
        "Invalid type for 'input': expected one of a string or array of input items, but got an integer "
        "instead.",
    ),
    (
        "input",
        {"role": "user", "content": "hi"},
        "Invalid type for 'input': expected one of a string or array of input items, but got an object "
        "instead.",
    ),
    ("metadata", [], "Invalid type for 'metadata': expected a metadata object, but got an array instead."),
    (
        "max_output_tokens",
        "many",
        "Invalid type for 'max_output_tokens': expected an integer, but got a string instead.",
    ),
    (
        "max_output_tokens",
        True,
        "Invalid type for 'max_output_tokens': expected an integer, but got a boolean instead.",
    ),
    (
        "max_output_tokens",
        1.5,
        "Invalid type for 'max_output_tokens': expected an integer, but got a decimal instead.",
    ),
    ("instructions", 7, "Invalid type for 'instructions': expected a string, but got an integer instead."),
    ("tools", "x", "Invalid type for 'tools': expected an array of tools, but got a string instead."),
    ("temperature", "hot", "Invalid type for 'temperature': expected a decimal, but got a string instead."),
    ("reasoning", "low", "Invalid type for 'reasoning': expected an object, but got a string instead."),
]
IDS = [f"{name}-{type(value).__name__}" for name, value, _message in WRONG]

# The first frame Codex sends (PROTOCOL.md's list of its fields), and the openai SDK's shapes.
CODEX_FRAME = {
    "type": "response.create",
    "model": "gpt-5.5",
    "instructions": "You are Codex.",
    "previous_response_id": None,
    "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "service_tier": None,
    "prompt_cache_key": "0199-session",
    "text": {"verbosity": "low"},
    "generate": False,
    "client_metadata": {"x-codex-turn": "1"},
}
SDK_BODIES = [
    {"model": "gpt-5.5", "input": "hi"},
    {"model": "gpt-5.5", "input": "hi", "stream": True, "store": True, "background": False},
    {"model": "gpt-5.5", "input": "hi", "max_output_tokens": 16, "temperature": 1, "top_p": 0.5},
    {
        "model": "gpt-5.5",
        "input": "hi",
        "metadata": {"k": "v"},
        "user": "u",
        "previous_response_id": "resp_1",
    },
    {"model": "gpt-5.5", "input": "hi", "metadata": None, "max_output_tokens": None, "reasoning": None},
]


def refusal(call, body: dict) -> dict:
    with pytest.raises(WireError) as caught:
        call(body)
    error = caught.value
    assert error.status == 400
    return error.error_object()


@pytest.mark.parametrize(("name", "value", "message"), WRONG, ids=IDS)
def test_a_field_of_the_wrong_type_is_refused_as_the_service_refuses_it(name, value, message):
    expected = {"type": "invalid_request_error", "code": "invalid_type", "message": message, "param": name}
    assert refusal(require_model, {"model": "gpt-5.5", name: value}) == expected
    frame = {"type": "response.create", "model": "gpt-5.5", name: value}
    assert refusal(validate_create_frame, frame) == expected


@pytest.mark.parametrize("value", ["x", 1, None], ids=["string", "integer", "null"])
def test_generate_is_a_boolean_on_the_websocket(value):
    got = {"x": "a string", 1: "an integer", None: "null"}[value]
    frame = {"type": "response.create", "model": "gpt-5.5", "generate": value}
    assert refusal(validate_create_frame, frame) == {
        "type": "invalid_request_error",
        "code": "invalid_type",
        "message": f"Invalid type for 'generate': expected a boolean, but got {got} instead.",
        "param": "generate",
    }


def test_a_background_of_the_wrong_type_is_a_type_error_not_an_unsupported_websocket_parameter():
    frame = {"type": "response.create", "model": "gpt-5.5", "background": "no"}
    assert refusal(validate_create_frame, frame)["code"] == "invalid_type"
    assert refusal(validate_create_frame, {**frame, "background": True})["code"] == "unsupported_parameter"


def test_what_codex_and_the_openai_sdk_send_passes():
    assert validate_create_frame(CODEX_FRAME) == "gpt-5.5"
    assert validate_create_frame({**CODEX_FRAME, "generate": True, "previous_response_id": "resp_1"})
    for body in SDK_BODIES:
        assert require_model(body) == "gpt-5.5"
    assert require_model({"model": "gpt-5.5", "input": "x", "max_output_tokens": 0}) == "gpt-5.5"


@pytest.mark.parametrize(("name", "value", "message"), WRONG[:5], ids=IDS[:5])
def test_over_http_a_field_of_the_wrong_type_is_a_400_and_no_upstream_is_asked(
    gateway, upstream, api_key, name, value, message
):
    make_provider(upstream)
    response = post(gateway, api_key, json.dumps({"model": "gpt-5.5", "input": "hi", name: value}).encode())
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": {"type": "invalid_request_error", "code": "invalid_type", "message": message, "param": name}
    }
    assert upstream.http_requests == 0
    (row,) = request_logs(1)
    assert (row.status, row.error_code) == (400, "invalid_type")


def test_over_websocket_a_field_of_the_wrong_type_is_an_error_frame_and_the_socket_goes_on(
    gateway, upstream, api_key
):
    make_provider(upstream)
    with open_socket(gateway, api_key) as sock:
        for name, value, message in [*WRONG[:5], WRONG[6], WRONG[7]]:
            frame = {"type": "response.create", "model": "gpt-5.5", "input": "hi", name: value}
            sock.send(json.dumps(frame))
            assert json.loads(sock.recv(timeout=10)) == {
                "type": "error",
                "status": 400,
                "error": {
                    "type": "invalid_request_error",
                    "code": "invalid_type",
                    "message": message,
                    "param": name,
                },
            }
        assert upstream.http_requests == 0 and upstream.ws_connections == 0
        sock.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}))
        events = [json.loads(sock.recv(timeout=10))]
        while events[-1]["type"] not in TERMINAL_TYPES:
            events.append(json.loads(sock.recv(timeout=10)))
        assert events[-1]["type"] == "response.completed", "the socket goes on"
