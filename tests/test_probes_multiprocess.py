"""`manage.py serve --workers 2` on PostgreSQL and Redis started here: /metrics adds up both workers'
turns (multiprocess mode), and /readyz answers 503 naming the database while it is down, and 200
"degraded" naming the cache while Redis is."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from tests.conftest import free_port, require
from tests.fakeupstream import FakeUpstream
from tests.helpers import manage
from tests.serveproc import RedisServer

BASE_DIR = Path(settings.BASE_DIR)
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to its own user there."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class Postgres:
    def __init__(self, root: Path) -> None:
        self.dir = root / "pg"
        self.dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        subprocess.run(
            as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust"]
            )
            + ["--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            cwd="/",
        )

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir}"
        subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log")])
            + ["-w", "-o", options, "start"],
            check=True,
            capture_output=True,
            cwd="/",
        )

    def stop(self) -> None:
        subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            cwd="/",
        )

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def served() -> Iterator[dict]:
    require(PG_BIN is not None and (PG_BIN / "initdb").exists(), "PostgreSQL is not installed")
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    root = Path(tempfile.mkdtemp(prefix="sluice-mp-"))
    root.chmod(0o755)
    pg, redis, upstream = Postgres(root), RedisServer(), FakeUpstream(name="alpha").start()
    process = None
    try:
        pg.start()
        redis.start()
        env = {
            **os.environ,
            "DATABASE_URL": pg.url,
            "REDIS_URL": redis.url,
            "SLUICE_DATA_DIR": str(root / "data"),
            "SLUICE_LOG_BATCH_SECONDS": "0.05",
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        manage(env, "migrate", "-v0")
        manage(env, "createsuperuser", "--noinput", "--username", "root", "--email", "root@example.test")
        manage(
            env,
            "createprovider",
            "--name",
            "alpha",
            "--base-url",
            upstream.base_url,
            "--api-key",
            upstream.api_key,
        )
        key = manage(env, "createapikey", "--name", "ops").strip().splitlines()[-1]
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--workers", "2", "--port", str(port), "--no-migrate"],
            cwd=BASE_DIR,
            env={**env, "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "the gateway did not start"
            time.sleep(0.2)
        yield {"url": url, "key": key, "pg": pg, "redis": redis, "root": root}
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        upstream.stop()
        redis.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def turns_counted(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sluice_turns_total" and sample.labels.get("status") == "200"
    )


def next_check(url: str) -> httpx.Response:
    """/readyz once its last answer (kept for about a second) is older than the change just made."""
    time.sleep(1.1)
    return httpx.get(url + "/readyz", timeout=20)


def test_metrics_add_up_across_workers_and_readyz_names_what_is_down(served):
    url, key = served["url"], served["key"]
    auth = {"Authorization": f"Bearer {key}"}
    for _ in range(8):  # a new connection per turn: the workers share them
        response = httpx.post(url + "/v1/responses", json={"model": "gpt-5.5", "input": "hi"}, headers=auth)
        assert response.status_code == 200, response.text
    with ws_connect(url.replace("http://", "ws://") + "/v1/responses", additional_headers=auth) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}))
        while json.loads(ws.recv(timeout=20))["type"] != "response.completed":
            pass
    deadline = time.monotonic() + 20
    while (counted := turns_counted(url)) < 9 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counted == 9
    for _ in range(6):  # whichever worker answers, the merged total is the same
        assert turns_counted(url) == 9
    # Each worker keeps its values in files of its own, which /metrics merges.
    pids = {f.stem.rsplit("_", 1)[-1] for f in (served["root"] / "metrics").glob("gauge_livesum_*.db")}
    assert len(pids) == 2, pids

    ready = httpx.get(url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text

    served["redis"].stop()  # degraded, not unready: the balancer must not drop every node at once
    degraded = next_check(url)
    assert degraded.status_code == 200, degraded.text
    assert degraded.json()["status"] == "degraded" and list(degraded.json()["degraded"]) == ["cache"]
    served["redis"].start()
    deadline = time.monotonic() + 10
    while httpx.get(url + "/readyz", timeout=20).json()["status"] != "ok":
        assert time.monotonic() < deadline, "still degraded after Redis came back"
        time.sleep(0.2)

    served["pg"].stop()
    down = next_check(url)
    assert down.status_code == 503 and "database" in down.json()["down"], down.text
    served["pg"].start()
    deadline = time.monotonic() + 10
    while httpx.get(url + "/readyz", timeout=20).status_code != 200:
        assert time.monotonic() < deadline, "not ready again after the database came back"
        time.sleep(0.2)
