"""Redis stopped or paused under a running ``manage.py serve``: traffic degrades, it does not stop."""

import json
import shutil
import signal
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import free_port, make_key, make_provider, require
from tests.serveproc import RedisServer, ServeProcess

pytestmark = pytest.mark.django_db(transaction=True)


def turn(client: httpx.Client) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
    return time.monotonic() - started, response


def ws_turn(sock) -> str:
    sock.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}))
    while True:
        kind = json.loads(sock.recv(timeout=10))["type"]
        if kind in ("response.completed", "error", "response.failed"):
            return kind


def test_redis_stopped_then_paused_degrades_instead_of_failing(upstream):
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    from proxy.models import RequestLog

    make_provider(upstream, websocket_mode="never")
    _, raw = make_key()
    headers = {"authorization": f"Bearer {raw}"}
    redis = RedisServer().start()
    env = {
        "REDIS_URL": redis.url,
        "SLUICE_CACHE_TIMEOUT": "0.2",
        "SLUICE_CACHE_RETRY_SECONDS": "1",
        "LOG_LEVEL": "INFO",
    }
    try:
        with (
            ServeProcess(**env) as server,
            httpx.Client(base_url=server.url, headers=headers, timeout=20) as client,
        ):
            ws_url = server.url.replace("http://", "ws://") + "/v1/responses"
            idle = connect(ws_url, additional_headers=headers)
            assert turn(client)[1].status_code == 200 and ws_turn(idle) == "response.completed"

            redis.stop()  # Redis gone: the cache and the channel layer fail
            for _ in range(10):
                elapsed, response = turn(client)
                assert response.status_code == 200, response.text[:300]
            with connect(ws_url, additional_headers=headers) as fresh:
                assert ws_turn(fresh) == "response.completed"
            time.sleep(1.5)  # the idle socket's consumer has been failing to read the channel layer
            assert ws_turn(idle) == "response.completed", "the idle socket was dropped"

            redis.start()
            time.sleep(1.5)  # the retry time passes; the next call finds Redis back
            assert turn(client)[1].status_code == 200
            redis.proc.send_signal(signal.SIGSTOP)  # paused: connections open, nothing answers
            times = []
            for _ in range(20):
                elapsed, response = turn(client)
                assert response.status_code == 200, response.text[:300]
                times.append(elapsed)
            redis.proc.send_signal(signal.SIGCONT)
            idle.close()
            output = server.terminate()
    finally:
        redis.stop()
    assert sum(times) < 3.0 and max(times) < 1.5, times
    assert output.count("shared state unreachable") == 2, output  # once per outage, not per request
    assert "shared state is back" in output
    assert "<html" not in output.lower()
    assert RequestLog.objects.filter(status=200).count() == 1 + 10 + 1 + 1 + 1 + 20 + 1


async def test_shared_state_reports_degradation_and_fails_fast(monkeypatch, settings):
    """What ``/readyz`` and the limits read: a cache that does not answer makes the process degraded,
    once, and no later call waits on it until the retry time passed."""
    from django.core.cache.backends.redis import RedisCache

    from settings_app import shared

    settings.SLUICE_CACHE_RETRY_SECONDS = 60
    dead = RedisCache(f"redis://127.0.0.1:{free_port()}/0", {"OPTIONS": {"socket_connect_timeout": 0.2}})
    monkeypatch.setattr(shared, "_backend", dead)
    monkeypatch.setattr(shared, "_degraded_since", None)
    monkeypatch.setattr(shared, "_down_until", 0.0)
    assert shared.status()["shared_state"] == "ok"
    assert await shared.aget("k", "default") == "default"
    assert shared.degraded() and shared.status()["shared_state"] == "degraded"
    assert "ConnectionError" in shared.status()["error"]
    started = time.monotonic()
    for _ in range(200):
        assert await shared.aincr("limit", 1, 60) is None  # the caller counts in its own process
        assert await shared.aget_many(["a", "b"]) == {}
        assert shared.try_get("v") == (False, None)
    assert time.monotonic() - started < 0.5
