"""Settings for running behind a balancer: host names, origins and cookies from SLUICE_PUBLIC_URL, the
proxies whose forwarded headers are believed, and the worker count from the environment."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SHOW = (
    "import django, json; django.setup(); from django.conf import settings as s; print(json.dumps(["
    "s.ALLOWED_HOSTS, s.CSRF_TRUSTED_ORIGINS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE,"
    " s.WEB_CONCURRENCY]))"
)


def environment(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "DATABASE_URL", "REDIS_URL"))}
    for name in (
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "FORWARDED_ALLOW_IPS",
        "WEB_CONCURRENCY",
        "SECRET_KEY",
    ):
        env.pop(name, None)
    return {**env, "DJANGO_SETTINGS_MODULE": "config.settings", "SLUICE_DATA_DIR": str(tmp_path), **values}


def settings_with(tmp_path: Path, **values: str) -> list:
    import json

    done = subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=ROOT,
        env=environment(tmp_path, **values),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_public_url_admits_its_host_and_origin_and_secures_cookies(tmp_path):
    hosts, origins, session_secure, csrf_secure, _ = settings_with(
        tmp_path, SLUICE_PUBLIC_URL="https://sluice.example.com"
    )
    assert "sluice.example.com" in hosts and "*" not in hosts
    assert {"127.0.0.1", "localhost"} <= set(hosts)  # probes from the host or container itself
    assert origins == ["https://sluice.example.com"]
    assert session_secure and csrf_secure


def test_explicit_lists_win_and_plain_http_keeps_cookies_usable(tmp_path):
    hosts, origins, session_secure, csrf_secure, workers = settings_with(
        tmp_path,
        SLUICE_PUBLIC_URL="http://sluice.internal:8080",
        ALLOWED_HOSTS="a.example,b.example",
        CSRF_TRUSTED_ORIGINS="https://a.example",
        WEB_CONCURRENCY="3",
    )
    assert hosts[:2] == ["a.example", "b.example"] and "sluice.internal" not in hosts
    assert origins == ["https://a.example"]
    assert not session_secure and not csrf_secure
    assert workers == 3


def test_without_a_public_url_only_local_names_are_admitted(tmp_path):
    hosts, origins, session_secure, _, workers = settings_with(tmp_path)
    assert set(hosts) == {"127.0.0.1", "localhost", "[::1]", "testserver"}
    assert origins == [] and not session_secure and workers == 1


def test_worker_count_comes_from_the_environment(tmp_path):
    # Several workers need Redis: the refusal shows that WEB_CONCURRENCY reached `serve`.
    done = subprocess.run(
        [sys.executable, "manage.py", "serve", "--no-migrate"],
        cwd=ROOT,
        env=environment(tmp_path, WEB_CONCURRENCY="2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "REDIS_URL" in done.stderr


def client_address_logged(tmp_path: Path, trusted: str) -> str:
    """Serve with FORWARDED_ALLOW_IPS=trusted; the access log line of a request that claims another client."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--access-log"],
        cwd=ROOT,
        env=environment(tmp_path, FORWARDED_ALLOW_IPS=trusted),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/healthz", headers={"X-Forwarded-For": "203.0.113.7"}
                )
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        assert answer.status_code == 200
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    lines = [line for line in output.splitlines() if "GET /healthz" in line]
    assert lines, output
    return lines[-1]


@pytest.mark.parametrize(
    ("trusted", "client"),
    [("127.0.0.1", "203.0.113.7"), ("192.0.2.1", "127.0.0.1"), ("127.0.0.0/8", "203.0.113.7")],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path, trusted, client):
    assert f"{client}:" in client_address_logged(tmp_path, trusted)
