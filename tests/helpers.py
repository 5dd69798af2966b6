"""What several test files need alike: waiting for a condition, one turn over HTTP or WebSocket, a client
socket and its events, a scrape of /metrics, a team, a ``manage.py`` command in a process of its own."""

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from tests.conftest import TERMINAL
from tests.serveproc import ROOT


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether ``predicate`` came true within ``timeout`` seconds (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def within(seconds: float, predicate: Callable[[], object]) -> float:
    """The seconds ``predicate`` took to come true; fails the test when it takes ``seconds`` or more."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "not seen in time"
        time.sleep(0.05)
    return time.monotonic() - started


def post(gateway: Any, key: str, content: bytes, **headers: str) -> httpx.Response:
    """``content`` as it is, posted to /v1/responses as JSON with ``key``."""
    return httpx.post(
        gateway.url + "/v1/responses",
        content=content,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers},
        timeout=20,
    )


def post_json(gateway: Any, key: str, **fields: Any) -> httpx.Response:
    """A turn of gpt-5.5 on input "x" (``fields`` override or add to it), posted with ``key``."""
    return httpx.post(
        gateway.url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "x", **fields},
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    )


def ws_turn(gateway: Any, key: str, headers: dict[str, str] | None = None, **fields: Any) -> list[dict]:
    """One turn of gpt-5.5 on input "x" (``fields`` override or add to it) on a new socket: its events up
    to the terminal one."""
    with ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {key}", **(headers or {})},
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "x", **fields}))
        events = []
        while not events or events[-1]["type"] not in TERMINAL:
            events.append(json.loads(ws.recv(timeout=15)))
        return events


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """``manage.py`` with ``args`` in a process of its own with environment ``env``: its output (it must
    succeed)."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def open_socket(gateway: Any, key: str, **headers: str) -> Any:
    return ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {key}", **headers},
        max_size=None,
    )


def read(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def until_terminal(ws: Any, stream_id: str | None = None) -> list[dict[str, Any]]:
    events = []
    while True:
        event = read(ws)
        if stream_id is not None and event.get("stream_id") != stream_id:
            continue
        events.append(event)
        if event["type"] in TERMINAL:
            return events


def create(ws: Any, text: str, **fields: Any) -> None:
    ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": text, **fields}))


def slow(upstream: Any, deltas: int = 200) -> None:
    """Turns of `deltas` text deltas 20 ms apart: long enough to act on a turn in flight."""
    upstream.text_deltas = deltas
    upstream.event_delay = 0.02


def scrape(gateway: Any, token: str | None = None) -> dict[tuple[str, tuple], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(gateway.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def make_team(name: str = "research", **fields: Any) -> Any:
    from proxy.models import Team  # imported here: the models need Django's apps loaded

    return Team.objects.create(name=name, **fields)
