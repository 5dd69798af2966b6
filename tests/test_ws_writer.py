"""Frames the gateway writes itself are byte for byte what the server's own WebSocket library writes."""

import pytest
from websockets.frames import Frame, Opcode

from proxy.ws.writer import frame_text


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_text_matches_websockets(size):
    payload = ("é" * size).encode()[:size] if size else b""
    assert frame_text(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_the_served_configuration_writes_events_that_arrived_together_in_one_call(gateway, upstream, api_key):
    """The test server runs with ``manage.py serve``'s protocol classes: a batch of upstream events that
    arrived in one read reaches the client through one write, and every event arrives, in order."""
    import json

    from websockets.sync.client import connect

    from proxy.ws import writer as ws_writer
    from tests.conftest import make_provider

    upstream.events_per_chunk = 20
    upstream.text_deltas = 60
    make_provider(upstream, websocket_mode="never")
    before = ws_writer.batches_written
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    with connect(url, additional_headers={"authorization": f"Bearer {api_key}"}) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hello there"}))
        events = []
        while not events or events[-1]["type"] not in ("response.completed", "error"):
            events.append(json.loads(ws.recv(timeout=20)))
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert ws_writer.batches_written > before
