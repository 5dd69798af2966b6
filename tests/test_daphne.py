"""The project keeps working under daphne, which can refuse an upgrade only with 403."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import free_port
from tests.helpers import manage

ROOT = Path(__file__).resolve().parent.parent


def start_daphne(env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    """daphne on a free port of 127.0.0.1; another port when another process took that one first (the
    port is free when chosen, not always when daphne binds it)."""
    for _attempt in range(3):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while process.poll() is None:
            try:
                httpx.get(url + "/healthz", timeout=1)
                return url, process
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        process.kill()
        detail = process.stderr.read().decode() if process.stderr else ""
        if "Address already in use" not in detail:
            raise RuntimeError(detail or "daphne did not start")
    raise RuntimeError("daphne found no free port")


@pytest.fixture
def daphne_gateway(tmp_path, upstream):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env["SLUICE_DATA_DIR"] = str(tmp_path)
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "createprovider",
        "--name",
        "fake",
        "--base-url",
        upstream.base_url,
        "--api-key",
        upstream.api_key,
    )
    key = manage(env, "createapikey", "--name", "daphne").strip().splitlines()[-1]
    url, process = start_daphne(env)
    yield url, key
    process.terminate()
    process.wait(10)


def test_http_and_websocket_turns_under_daphne(daphne_gateway, upstream):
    url, key = daphne_gateway
    response = httpx.post(
        url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "via daphne"},
        headers={"authorization": f"Bearer {key}"},
    )
    assert (
        response.status_code == 200
        and response.json()["output"][0]["content"][0]["text"] == "echo: via daphne"
    )
    with ws_connect(
        url.replace("http", "ws") + "/v1/responses", additional_headers={"authorization": f"Bearer {key}"}
    ) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "socket"}))
        while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
            pass
    assert upstream.ws_connections == 1


def test_refusal_under_daphne_is_a_403(daphne_gateway):
    url, _ = daphne_gateway
    with pytest.raises(InvalidStatus) as info:
        ws_connect(
            url.replace("http", "ws") + "/v1/responses", additional_headers={"authorization": "Bearer nope"}
        )
    assert info.value.response.status_code == 403
