"""Fixtures: the gateway served by a real uvicorn on 127.0.0.1, fake upstreams, providers and keys."""

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from django.core.cache import caches

from tests.fakeupstream import FakeUpstream

REQUIRE_ALL = os.environ.get("SLUICE_REQUIRE_ALL") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip when a tool is missing on a developer machine; fail in CI, where everything must run."""
    if not condition:
        if REQUIRE_ALL:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn server in a thread of the test process, so tests share its database and cache."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.port = free_port()
        self.config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning", **config
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())
        from proxy.upstream.http import close_session

        self.loop.run_until_complete(close_session())

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def server_loop(self) -> asyncio.AbstractEventLoop:
        assert self.loop is not None
        return self.loop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def gateway_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[ServerThread]:
    with django_db_blocker.unblock():
        from config.asgi import application
        from proxy.server.serving import server_options

        server = ServerThread(application, **server_options()).start()  # as manage.py serve has it
    yield server
    server.stop()
    with django_db_blocker.unblock():
        _close_other_connections()


def _close_other_connections() -> None:
    """The server's worker threads keep database connections; PostgreSQL cannot drop the test database
    while they are open."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Mutation testing runs several test sessions at once in one checkout: each needs a SQLite test
    database of its own (the file named in the settings would be created and dropped under the others)."""
    from django.conf import settings

    test = settings.DATABASES["default"].get("TEST") or {}
    if "MUTANT_UNDER_TEST" in os.environ and str(test.get("NAME", "")).endswith(".sqlite3"):
        test["NAME"] = test["NAME"].removesuffix(".sqlite3") + f"-{os.getpid()}.sqlite3"


@pytest.fixture(autouse=True, scope="session")
def _short_log_batches() -> None:
    """Tests read the request log right after a turn: batches of 20 ms instead of a second."""
    from django.conf import settings

    settings.SLUICE_LOG_BATCH_SECONDS = 0.02


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    """Every test starts with empty shared state: cache (affinity, breakers) and config snapshots, and no
    request-log row of an earlier test still waiting to be written into this one's tables."""
    from audit import alerts
    from proxy.governance import limits
    from proxy.usage import logwriter
    from settings_app import shared
    from settings_app.runtime import invalidate_all

    logwriter.flush(10)
    alerts.flush(10)  # alert jobs of an earlier test (spend checks, deliveries) write nothing into this one
    caches["default"].clear()
    limits.reset_local()
    invalidate_all()
    shared.reset()  # a test that made shared state unreachable leaves no outage behind
    yield
    invalidate_all()
    # The test client's requests activate the language they asked for in this thread; the next test
    # (a management command, a message) must not come out in Russian.
    from django.utils import translation

    translation.deactivate()


@pytest.fixture
def gateway(gateway_server: ServerThread, transactional_db: None) -> Iterator[ServerThread]:
    yield gateway_server
    flush_request_log()


def flush_request_log() -> None:
    """Rows of a test are written before its tables are emptied, not into the next test's."""
    from proxy.usage import logwriter

    logwriter.flush(10)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(name="alpha") as fake:
        yield fake


@pytest.fixture
def upstream_b() -> Iterator[FakeUpstream]:
    with FakeUpstream(name="beta") as fake:
        yield fake


def sdk(gateway: ServerThread, key: str) -> Any:
    """The OpenAI SDK pointed at the gateway, without its own retries (tests count upstream requests)."""
    import openai

    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=20)


TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def sdk_turn(conn: Any, **fields: Any) -> list[Any]:
    """Send one response.create on an SDK WebSocket connection; read its events up to the end of the turn."""
    conn.response.create(**fields)
    events = []
    for event in conn:
        events.append(event)
        if event.type in TERMINAL:
            return events
    raise AssertionError("connection ended mid-turn")


def make_provider(fake: FakeUpstream | None, name: str = "alpha", **fields: Any) -> Any:
    from providers.models import Provider

    provider = Provider(
        name=name,
        base_url=fake.base_url if fake is not None else f"http://127.0.0.1:{free_port()}/v1",
        **fields,
    )
    provider.set_api_key(fake.api_key if fake is not None else "sk-nothing-listens")
    provider.save()
    return provider


def make_key(name: str = "team", username: str = "alice", **fields: Any) -> tuple[Any, str]:
    from django.contrib.auth import get_user_model

    from proxy.models import ApiKey

    owner, _ = get_user_model().objects.get_or_create(username=username)
    key = ApiKey(name=name, owner=owner, **fields)
    raw = key.generate()
    key.save()
    return key, raw


@pytest.fixture
def api_key(transactional_db: None) -> Iterator[str]:
    yield make_key()[1]
    flush_request_log()


def request_logs(count: int, timeout: float = 10.0) -> list[Any]:
    """Wait for the off-path writer to store ``count`` rows; return them oldest first."""
    from proxy.models import RequestLog
    from proxy.usage import logwriter

    deadline = time.monotonic() + timeout
    while True:
        logwriter.flush(timeout)
        rows = list(RequestLog.objects.order_by("created_at", "pk"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Carry how the fleet ran on the test's report: under pytest-xdist the summary is printed by another
    process than the one that ran the fleet, and reports are what travels between them."""
    import sys

    report = yield
    fleet = sys.modules.get("tests.fleet")
    if fleet is not None and fleet.MODES_RAN and report.when == "teardown":
        report.user_properties.append(("fleet_modes", sorted(fleet.MODES_RAN)))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how the fleet test ran (separate hosts in network namespaces, or the loopback fallback)."""
    modes = {
        mode
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == "fleet_modes"
        for mode in value
    }
    if modes:
        terminalreporter.write_line(f"fleet test nodes ran in: {', '.join(sorted(modes))}")


# Fixtures and module-level names that mean a test serves something: the gateway (in a thread or a
# process), a fake upstream, the Codex CLI, Chromium, the fleet. `bin/test --fast` runs the others.
SERVING_FIXTURES = frozenset({"gateway_server", "upstream", "upstream_b"})
SERVING_NAMES = frozenset({"ServeProcess", "FakeUpstream", "ServerThread", "sync_playwright", "subprocess"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        serving = SERVING_FIXTURES.intersection(getattr(item, "fixturenames", ())) or (
            module is not None and SERVING_NAMES.intersection(vars(module))
        )
        if serving:
            item.add_marker(pytest.mark.server)
