"""The SSE decoder keeps each event's bytes for untouched relaying, whatever the chunking."""

from proxy.common.wire import SSEDecoder, event_type

STREAM = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
    b": keep-alive comment\n\n"
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"h\\u00e9"}\n\n'
    b'data: {"sequence_number":2,"type":"response.completed"}\n\n'
    b"data: [DONE]\n\n"
)


def decode_in_chunks(data: bytes, size: int):
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(data), size):
        events += decoder.feed(data[i : i + size])
    return events


def test_any_chunking_gives_the_same_events():
    whole = decode_in_chunks(STREAM, len(STREAM))
    assert [e.type for e in whole] == ["response.created", "response.output_text.delta", "response.completed"]
    for size in (1, 2, 3, 7, 64):
        assert decode_in_chunks(STREAM, size) == whole


def test_events_relay_their_original_bytes():
    first = decode_in_chunks(STREAM, 5)[0]
    assert first.as_sse() == STREAM.split(b"\n\n")[0] + b"\n\n"


def test_crlf_line_endings():
    events = decode_in_chunks(STREAM.replace(b"\n", b"\r\n"), 3)
    assert [e.type for e in events][-1] == "response.completed"


def test_event_type_without_parsing_and_with_type_not_first():
    assert event_type('{"type":"response.created","response":{"type":"x"}}') == "response.created"
    assert event_type('{"response":{"type":"x"},"type":"error"}') == "error"
    assert event_type("not json") == ""
