"""A client WebSocket may stay idle between turns for longer than the channel layer's blocking read."""

import json
import time

from django.conf import settings
from websockets.sync.client import connect as ws_connect

from tests.conftest import make_provider


def test_an_idle_socket_outlives_the_channel_layers_blocking_reads(gateway, upstream, api_key):
    make_provider(upstream)
    url = gateway.url.replace("http", "ws") + "/v1/responses"
    with ws_connect(url, additional_headers={"authorization": f"Bearer {api_key}"}) as ws:
        # channels_redis blocks 5 s per read of the socket's channel; with Redis, three of them go by.
        time.sleep(16 if settings.REDIS_URL else 1)
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "still there?"}))
        events = [json.loads(ws.recv(timeout=10))]
        while events[-1]["type"] not in ("response.completed", "error"):
            events.append(json.loads(ws.recv(timeout=10)))
    assert events[-1]["type"] == "response.completed"
