"""Probes and turns through the gateway served from the built image, with the OpenAI SDK, to a fake.

Run by `.ci/image` on the host, with the repository's .venv (the test extras: the SDK and the fake):
    image_check.py GATEWAY_URL PUBLIC_URL -- MANAGE_COMMAND...
GATEWAY_URL is the gateway served from the image and PUBLIC_URL its SLUICE_PUBLIC_URL. MANAGE_COMMAND
runs the image's `manage.py` inside the image's filesystem, as its user, with its environment (it is
given a subcommand and its arguments): the provider and the API key are made with it, so the image's own
code writes them to the shared database. Exits non-zero, saying why, when a probe fails or a turn does
not arrive at the upstream or its answer does not come back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import openai  # noqa: E402

from tests.fakeupstream import FakeUpstream  # noqa: E402

TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def probes(gateway: str, public_url: str) -> None:
    """Health and readiness, the admin's static files, and the host names and cookies of SLUICE_PUBLIC_URL."""
    with httpx.Client(base_url=gateway, timeout=10) as http:
        health = http.get("/healthz")
        if health.status_code != 200:
            raise SystemExit(f"/healthz answered {health.status_code}")
        ready = http.get("/readyz")
        if ready.status_code == 404:
            print("/readyz: 404, no readiness probe in this version")
        elif ready.status_code != 200:
            raise SystemExit(f"/readyz answered {ready.status_code}: {ready.text[:200]}")
        else:
            print("/readyz: 200")
        css = http.get("/static/admin/css/base.css")
        if css.status_code != 200 or not css.headers.get("content-type", "").startswith("text/css"):
            raise SystemExit(f"admin static file: {css.status_code} {css.headers.get('content-type')}")
        print(f"/healthz: 200; admin static file: {len(css.content)} bytes of text/css")

        public = urlsplit(public_url)
        login = http.get("/admin/login/", headers={"Host": public.netloc, "X-Forwarded-Proto": public.scheme})
        csrf = SimpleCookie(login.headers.get("set-cookie", "")).get("csrftoken")
        if login.status_code != 200 or csrf is None:
            raise SystemExit(f"admin login page at {public.netloc}: {login.status_code}, no CSRF cookie")
        if public.scheme == "https" and not csrf["secure"]:
            raise SystemExit(f"the CSRF cookie is not Secure behind {public_url}")
        other = http.get("/admin/login/", headers={"Host": "elsewhere.invalid"})
        if other.status_code != 400:
            raise SystemExit(f"a request for another host name answered {other.status_code}, not 400")
        print(f"admin at {public.netloc}: 200 with a secure CSRF cookie; another host name: 400")


def manage(command: list[str], *args: str) -> str:
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def http_turn(client: openai.OpenAI, text: str) -> str:
    """One turn over HTTP; the provider made a moment ago may take a poll interval to reach every worker."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return client.responses.create(model="gpt-5.5", input=text).output_text
        except openai.APIStatusError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"HTTP turn failed: {exc.status_code} {exc.body}") from None
            time.sleep(0.5)


def websocket_turn(client: openai.OpenAI, text: str) -> list[Any]:
    with client.responses.connect(max_retries=0) as conn:
        conn.response.create(model="gpt-5.5", input=text)
        events = []
        for event in conn:
            events.append(event)
            if event.type in TERMINAL:
                return events
    raise SystemExit("WebSocket turn: the connection ended mid-turn")


def main() -> None:
    gateway, public_url, separator, *manage_command = sys.argv[1:]
    assert separator == "--" and manage_command, __doc__
    probes(gateway, public_url)
    with FakeUpstream(name="image") as fake:
        print(
            manage(
                manage_command,
                "createprovider",
                "--name",
                "fake",
                "--base-url",
                fake.base_url,
                "--api-key",
                fake.api_key,
            ).strip()
        )
        key = manage(manage_command, "createapikey", "--name", "image-check").strip().splitlines()[-1]
        client = openai.OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0, timeout=20)

        answer = http_turn(client, "hello over http")
        http_posts = [r for r in fake.requests if r.transport == "http" and r.method == "POST"]
        if answer != "echo: hello over http" or not http_posts:
            raise SystemExit(f"HTTP turn: answer {answer!r}, {len(http_posts)} upstream request(s)")
        if http_posts[-1].headers.get("authorization") != f"Bearer {fake.api_key}":
            raise SystemExit("HTTP turn: the upstream did not get the provider's key")
        print(f"HTTP turn through the image: {answer!r}")

        before = len(fake.requests)
        events = websocket_turn(client, "hello over websocket")
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        if events[-1].type != "response.completed" or text != "echo: hello over websocket":
            raise SystemExit(f"WebSocket turn: ended with {events[-1].type}, text {text!r}")
        upstream = sorted({r.transport for r in fake.requests[before:]})
        if not upstream:
            raise SystemExit("WebSocket turn: nothing reached the upstream")
        print(f"WebSocket turn through the image: {text!r} ({len(events)} events; upstream over {upstream})")


if __name__ == "__main__":
    main()
