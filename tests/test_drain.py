"""A gateway told to stop drains instead of dropping: /readyz says 503, idle client sockets are told to go
away (1001), a turn in flight finishes and is logged, and no new connection is taken."""

import json
import socket
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from proxy.server import lifecycle
from proxy.server.drain import DrainingServer
from tests.conftest import ServerThread, make_provider, request_logs


@pytest.fixture
def not_draining(monkeypatch):
    """Draining is process state: whatever a test does, the next one starts serving."""
    monkeypatch.setattr(lifecycle, "_draining", False)
    monkeypatch.setattr(lifecycle, "_open", set())


def test_readyz_answers_503_once_draining_starts(gateway, not_draining):
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    lifecycle.begin_drain()
    response = httpx.get(gateway.url + "/readyz")
    assert response.status_code == 503 and "draining" in response.text
    assert httpx.get(gateway.url + "/healthz").status_code == 200, "alive, only not ready"


@pytest.fixture
def draining_server(gateway_server, transactional_db, not_draining, settings):
    """A second in-process server whose shutdown is the drain (the shared one must keep serving)."""
    from config.asgi import application

    settings.SLUICE_DRAIN_SECONDS = 10
    server = ServerThread(application, ws="websockets-sansio")
    server.server = DrainingServer(server.config)
    yield server.start()
    server.stop()


def ws_open(url: str, key: str):
    headers = {"authorization": f"Bearer {key}"}
    return ws_connect(url.replace("http://", "ws://") + "/v1/responses", additional_headers=headers)


def test_shutdown_finishes_the_turn_in_flight_and_sends_idle_sockets_away(draining_server, upstream, api_key):
    make_provider(upstream)
    upstream.event_delay, upstream.text_deltas = 0.2, 10  # about 3 s per turn
    idle = ws_open(draining_server.url, api_key)
    busy = ws_open(draining_server.url, api_key)
    busy.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "slow"}))
    assert upstream.wait_for(lambda: upstream.open_ws == 1)
    started = time.monotonic()
    draining_server.server.should_exit = True
    with pytest.raises(Exception):  # noqa: B017 - the close frame ends the read
        idle.recv(timeout=2)
    assert idle.close_code == 1001, "an idle socket is told to go away at once"
    assert time.monotonic() - started < 2
    events = []
    while True:
        event = json.loads(busy.recv(timeout=10))
        events.append(event["type"])
        if event["type"] in ("response.completed", "error"):
            break
    assert events[-1] == "response.completed" and len(events) > 10, events
    with pytest.raises(Exception):  # noqa: B017
        busy.recv(timeout=3)
    assert busy.close_code == 1001, "once its turn is done, the busy socket goes away too"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", draining_server.port), timeout=1).close()
    draining_server.thread.join(10)
    assert not draining_server.thread.is_alive(), "the server exited once drained"
    rows = request_logs(1)
    assert [(r.status, r.client_transport) for r in rows] == [(200, "websocket")]


def test_a_turn_over_the_grace_is_cut_when_it_ends(draining_server, upstream, api_key, settings):
    settings.SLUICE_DRAIN_SECONDS = 1
    make_provider(upstream)
    upstream.event_delay, upstream.text_deltas = 0.5, 20  # about 12 s: longer than the grace
    busy = ws_open(draining_server.url, api_key)
    busy.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "slow"}))
    assert upstream.wait_for(lambda: upstream.open_ws == 1)
    started = time.monotonic()
    draining_server.server.should_exit = True
    done = threading.Event()

    def read() -> None:
        try:
            while True:
                busy.recv(timeout=15)
        except Exception:  # noqa: BLE001
            done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(8), "the drain waited past its grace"
    assert time.monotonic() - started < 5


async def test_a_socket_whose_client_left_first_does_not_stop_the_drain(not_draining):
    """go_away() on a socket whose client is gone raises (uvicorn: ClientDisconnected); the drain goes on."""
    import asyncio

    from proxy.server.drain import drain_sockets

    class Gone:
        def idle(self) -> bool:
            return True

        async def go_away(self) -> None:
            raise OSError("client disconnected")

    lifecycle.opened(Gone())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await drain_sockets(started + 5)
    assert lifecycle.open_connections() == []
    assert loop.time() - started < 1
