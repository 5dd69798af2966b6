"""A lane's events reach it whatever characters its stream_id holds (the upstream escapes them in JSON)."""

import pytest

from tests.conftest import make_provider
from tests.helpers import create, open_socket, until_terminal


@pytest.mark.parametrize("stream_id", ["é", "日本", 'a"b', "a\tb", "back\\slash"])
def test_a_lane_named_with_escaped_characters_gets_its_events(gateway, upstream, api_key, stream_id):
    make_provider(upstream, first_byte_timeout=3)
    upstream.ws_lanes = True
    with open_socket(gateway, api_key) as ws:
        for text in ("first", "second"):  # the probe turn, then one on the socket known to speak lanes
            create(ws, text, stream_id=stream_id, store=False)
            events = until_terminal(ws, stream_id)
            assert events[-1]["type"] == "response.completed", events[-1]
            deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
            assert deltas == f"echo: {text}"
    assert upstream.ws_connections == 1, "both turns on the one shared upstream socket"
