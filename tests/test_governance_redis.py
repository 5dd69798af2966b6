"""Two gateway processes on one Redis share their limits: together they let through exactly the limit.

Runs only with REDIS_URL set (CI's second run); the embedded default has one process and its own store.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings

from tests.conftest import free_port, make_key, make_provider, request_logs

pytestmark = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (CI runs it with Redis)"
)

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


class Gateway:
    """A gateway in a process of its own (``manage.py serve``), sharing the test's database and Redis."""

    def __init__(self) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "SECRET_KEY": settings.SECRET_KEY,
            "SLUICE_ENCRYPTION_KEY": settings.SLUICE_ENCRYPTION_KEY,
            # One window for the whole test: nothing rolls over while it counts.
            "SLUICE_RATE_WINDOW_SECONDS": "3600",
        }
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--no-migrate", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode()[-2000:])
            try:
                httpx.get(self.url + "/v1/models", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("gateway process did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def two_gateways(transactional_db):
    gateways = [Gateway(), Gateway()]
    try:
        for gateway in gateways:
            gateway.wait_ready()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


def test_two_processes_let_through_exactly_the_limit(two_gateways, upstream, settings):
    from proxy.governance import limits

    settings.SLUICE_RATE_WINDOW_SECONDS = 3600
    make_provider(upstream)
    key, raw = make_key(rpm=7, concurrency=20)
    statuses: list[int] = []
    start = threading.Barrier(20)

    def one(url: str) -> None:
        start.wait(10)
        response = httpx.post(
            url + "/v1/responses",
            json={"model": "gpt-5.5", "input": "race"},
            headers={"Authorization": f"Bearer {raw}"},
            timeout=30,
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=one, args=(two_gateways[n % 2].url,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [200] * 7 + [429] * 13
    assert upstream.http_requests == 7
    assert limits.usage(f"k{key.pk}").requests == 7, "the counter both processes share, read from a third"
    deadline = time.monotonic() + 10
    while limits.usage(f"k{key.pk}").slots and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limits.usage(f"k{key.pk}").slots == 0, "every turn gave its slot back in its own process"
    assert len([r for r in request_logs(20, timeout=15) if r.status == 429]) == 13


def test_a_turn_right_after_another_gets_the_slot_just_given_back(transactional_db):
    """Releases go to Redis off the event loop; an admission waits for this process's pending releases of
    the same quotas, so a key with one slot can run turn after turn."""
    from asgiref.sync import async_to_sync

    from proxy.governance import limits
    from proxy.governance.auth import _load

    key, raw = make_key(concurrency=1)
    client = _load()[key.hashed_key]

    async def back_to_back() -> None:
        for _ in range(300):
            admission = await limits.admit(client, "gpt-5.5")
            admission.release()

    async_to_sync(back_to_back)()
