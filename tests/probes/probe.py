"""A fault-and-abuse probe: a real gateway (``manage.py serve`` in a process of its own, on SQLite in a
temporary directory) in front of the test suite's fake upstream, and clients that misbehave.

    .venv/bin/python -m tests.probes.probe [--scale N] [--lock-seconds S]

Not a test (pytest never collects it: no ``test_`` file or function): it prints figures, which
docs/reliability.md records. Every section is small by default (a two-core machine shared with others);
``--scale`` multiplies the counts. It never asserts: a figure that should be 0 and is not is a finding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[2]
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Probe:
    def __init__(self, scale: int, lock_seconds: float) -> None:
        self.scale = scale
        self.lock_seconds = lock_seconds
        self.data = Path(tempfile.mkdtemp(prefix="sluice-probe-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.figures: dict[str, dict[str, Any]] = {}
        self.rng = random.Random(18)
        os.environ.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            SLUICE_DATA_DIR=str(self.data),
            SLUICE_CONFIG_POLL_SECONDS="1",
            SLUICE_LOG_BATCH_SECONDS="0.2",
            LOG_LEVEL="WARNING",
        )

    # ----- set-up -----

    def setup(self) -> None:
        # imported here: Django needs django.setup(), which runs once the environment is set
        import django

        django.setup()
        # imported here: Django needs django.setup(), which runs once the environment is set
        from django.core.management import call_command

        from tests.fakeupstream import FakeUpstream

        call_command("migrate", verbosity=0)
        self.fake = FakeUpstream(name="probe").start()
        self.keys = self.make_fixtures()
        log = open(self.data / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.server = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(self.port), "--no-migrate"],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("the gateway did not start; see " + str(self.data / "server.log"))

    def make_fixtures(self) -> dict[str, str]:
        # imported here: Django needs django.setup(), which runs once the environment is set
        from django.contrib.auth import get_user_model

        from providers.models import Provider
        from proxy.models import ApiKey, Team

        provider = Provider(name="probe", base_url=self.fake.base_url)
        provider.set_api_key(self.fake.api_key)
        provider.save()
        users = {n: get_user_model().objects.create(username=n) for n in ("alice", "bob", "carol")}
        team_a = Team.objects.create(name="=team-a")
        team_b = Team.objects.create(name="team-b", daily_budget=Decimal("0.01"))
        specs = {
            "a": dict(owner=users["alice"], team=team_a),
            "b": dict(owner=users["bob"], team=team_a),
            "budget": dict(owner=users["carol"], team=team_b),
            "rpm": dict(owner=users["carol"], rpm=10 * self.scale),
        }
        keys = {}
        for name, fields in specs.items():
            key = ApiKey(name=f"@{name}", **fields)
            keys[name] = key.generate()
            key.save()
        return keys

    def stop(self) -> None:
        log = (self.data / "server.log").read_text(errors="replace").splitlines()
        problems = [line for line in log if "Traceback" in line or "ERROR" in line or "CRITICAL" in line]
        print(f"\nserver log: {len(log)} lines, {len(problems)} errors", *problems[-10:], sep="\n  ")
        self.server.send_signal(signal.SIGTERM)
        try:
            self.server.wait(40)
        except subprocess.TimeoutExpired:
            self.server.kill()
        self.fake.stop()
        shutil.rmtree(self.data, ignore_errors=True)

    # ----- helpers -----

    def auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}"}

    def rows(self) -> int:
        # imported here: Django needs django.setup(), which runs once the environment is set
        from proxy.models import RequestLog

        return RequestLog.objects.count()

    def settled_rows(self) -> int:
        """The row count once the writer has caught up (unchanged for a second)."""
        last = -1
        while (now := self.rows()) != last:
            last = now
            time.sleep(1)
        return now

    def wait_rows(self, at_least: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.rows() < at_least and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        return self.rows()

    def turn_ms(self, client: httpx.Client, key: str = "a") -> float:
        started = time.perf_counter()
        client.post("/v1/responses", json={"model": "gpt-5.5", "input": "t"}, headers=self.auth(key))
        return (time.perf_counter() - started) * 1000

    def record(self, section: str, items: str, **figures: Any) -> None:
        self.figures[section] = {"items": items, **figures}
        print(f"\n[{section}] (items {items})", flush=True)
        for name, value in figures.items():
            print(f"  {name}: {value}", flush=True)


# ----- sections: each sends its clients and records its figures -----


def bad_bodies(rng: random.Random, n: int) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """(method, path, body, extra headers) of requests a careless or hostile client sends."""
    shapes: list[tuple[str, str, bytes | None, dict[str, str]]] = [
        ("POST", "/v1/responses", b"{not json", {}),
        ("POST", "/v1/responses", b"[]", {}),
        ("POST", "/v1/responses", b'{"model": 5, "input": "x"}', {}),
        ("POST", "/v1/responses", b'{"model": "gpt-5.5", "input": {"a": 1}}', {}),
        ("POST", "/v1/responses", b'{"model": "gpt-5.5", "input": "x", "max_output_tokens": -7}', {}),
        ("POST", "/v1/responses", b'{"model": "gpt-5.5", "input": "x", "max_output_tokens": 1e400}', {}),
        ("POST", "/v1/responses", b'{"model": "gpt-5.5", "input": "x", "stream": "yes"}', {}),
        ("POST", "/v1/responses", b"[" * 100_000 + b"]" * 100_000, {}),
        ("POST", "/v1/responses", b'{"model": "\xff\xfe", "input": "x"}', {}),
        ("POST", "/v1/responses", b'{"model": "gpt-5.5\\u0000", "input": "\\udc80"}', {}),
        ("GET", "/v1/responses/..%2f..%2fadmin", None, {}),
        ("GET", "/v1/responses/resp_" + "日本" * 50, None, {}),
        ("DELETE", "/v1/responses/%00", None, {}),
        ("PUT", "/v1/responses", b"{}", {}),
        (
            "POST",
            "/v1/responses",
            b'{"model": "gpt-5.5", "input": "x"}',
            {"x-codex-turn-state": "\x01" * 300},
        ),
        ("GET", "/v1/models/" + "m" * 5000, None, {}),
    ]
    out = []
    for i in range(n):
        method, path, body, headers = shapes[i % len(shapes)]
        if i >= len(shapes) and body:
            cut = rng.randrange(len(body))  # a body cut or with a byte flipped
            body = body[:cut] + bytes([rng.randrange(256)]) + body[cut + 1 :]
        out.append((method, path, body, headers))
    return out


def http_fuzz(p: Probe) -> None:
    n = 300 * p.scale
    statuses: Counter[int] = Counter()
    not_json = gateway_5xx = 0
    odd: Counter[str] = Counter()
    with httpx.Client(base_url=p.url, timeout=30) as client:
        for method, path, body, headers in bad_bodies(p.rng, n):
            all_headers = {**p.auth("a"), "content-type": "application/json", **headers}
            response = client.request(method, path, content=body, headers=all_headers)
            statuses[response.status_code] += 1
            try:
                error_body = response.json()
                if response.status_code >= 400 and not isinstance(error_body.get("error"), dict):
                    not_json += 1
                    odd[f"{method} {path[:40]} -> {response.status_code}: {response.text[:40]}"] += 1
            except ValueError:
                if response.status_code < 400:
                    continue  # an event stream ("stream": "yes" is truthy to the upstream too)
                not_json += 1
                odd[f"{method} {path[:40]} -> {response.status_code}: {response.text[:40]}"] += 1
            gateway_5xx += response.status_code >= 500 and response.status_code not in (502, 504)
    p.record(
        "http_bad_input",
        "general; 16 (filters), 17c",
        requests=n,
        statuses=dict(sorted(statuses.items())),
        gateway_5xx=gateway_5xx,
        answers_not_openai_json=not_json,
        which=dict(odd),
    )


def fuzz_frames(rng: random.Random, n: int) -> list[str | bytes]:
    base = {"type": "response.create", "model": "gpt-5.5", "input": "hi"}
    mutations = [
        lambda: rng.randbytes(rng.randrange(1, 200)),
        lambda: "{" * rng.randrange(1, 50),
        lambda: json.dumps({**base, "type": rng.choice(["", "x", None, 5, "response.cancel"])}),
        lambda: json.dumps({**base, "model": rng.choice([None, 7, "", "m" * 300, "é日本"])}),
        lambda: json.dumps({**base, "input": rng.choice([None, 5, {"a": [1]}, [None], [{"type": 3}]])}),
        lambda: json.dumps({**base, "stream_id": rng.choice(["é", 'a"b', "\t", "", 9, "x" * 500])}),
        lambda: json.dumps({"type": "response.interrupt", "response_id": rng.choice(["", "resp_x", 5])}),
        lambda: json.dumps({**base, "previous_response_id": rng.choice(["resp_nope", "", 5, "../x"])}),
        lambda: json.dumps({**base, "max_output_tokens": rng.choice([-1, 0, 10**30, "x"])}),
        lambda: json.dumps(base),
    ]
    return [rng.choice(mutations)() for _ in range(n)]


def ws_fuzz(p: Probe) -> None:
    n = 400 * p.scale
    url = p.url.replace("http://", "ws://") + "/v1/responses"
    answers: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    sock = None
    for frame in fuzz_frames(p.rng, n):
        try:
            if sock is None:
                sock = ws_connect(url, additional_headers=p.auth("a"), open_timeout=10)
            sock.send(frame)
            while True:  # read to the end of what this frame started
                event = json.loads(sock.recv(timeout=10))
                kind = event.get("type", "?")
                if kind in ("error", "response.completed", "response.failed", "response.incomplete"):
                    error = event.get("error") or {}
                    code = error.get("code") or f"{error.get('type')} {event.get('status')}"
                    answers[kind if kind != "error" else f"error:{code}"] += 1
                    break
                if kind == "response.interrupt.failed":
                    answers[kind] += 1
                    break
        except ConnectionClosed as closed:
            closes[str(closed.rcvd.code if closed.rcvd else "no close frame")] += 1
            sock = None
        except TimeoutError:
            answers["no answer in 10 s"] += 1
    if sock is not None:
        sock.close()
    served = 0
    with ws_connect(url, additional_headers=p.auth("a")) as last:
        last.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "after"}))
        while (kind := json.loads(last.recv(timeout=10))["type"]) not in ("response.completed", "error"):
            pass
        served = kind == "response.completed"
    top = dict(answers.most_common(8))
    p.record(
        "websocket_frame_fuzz",
        "general; 13 (stream_id), 3 (closes)",
        frames=n,
        answers=top,
        closes=dict(closes),
        serves_a_turn_after=bool(served),
    )


FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("drop mid-stream", {"drop_after_events": 2}),
    ("upstream 500", {"http_fail_status": 500}),
    ("response.failed", {"fail_event": "response.failed"}),
    ("JSON body cut", {"cut_json_body": "drop"}),
    ("no terminal event", {"omit_terminal": True}),
    ("negative usage", {"usage_override": {"input_tokens": -6_000_000, "output_tokens": -5}}),
]


def one_faulted_turn(p: Probe, client: httpx.Client, stream: bool) -> int:
    body = {"model": "gpt-5.5", "input": "fault", "stream": stream}
    try:
        with client.stream("POST", "/v1/responses", json=body, headers=p.auth("a")) as response:
            for _ in response.iter_bytes():
                pass
            return response.status_code
    except httpx.HTTPError:
        return -1  # the connection broke, as the gateway does when a non-streamed body breaks


def faulted_turns(p: Probe) -> None:
    n = 20 * p.scale
    before = p.settled_rows()
    outcome: dict[str, dict[int, int]] = {}
    with httpx.Client(base_url=p.url, timeout=30) as client:
        for name, switches in FAULTS:
            p.fake.reset()
            for attribute, value in switches.items():
                setattr(p.fake, attribute, value)
            seen: Counter[int] = Counter(one_faulted_turn(p, client, i % 2 == 0) for i in range(n))
            outcome[name] = dict(seen)
    p.fake.reset()
    sent = n * len(FAULTS)
    written = p.wait_rows(before + sent) - before
    # imported here: Django needs django.setup(), which runs once the environment is set
    from proxy.models import RequestLog

    negative = RequestLog.objects.filter(input_tokens__lt=0).count()
    p.record(
        "faulted_turns",
        "general; 12 (negative usage), 15 (rows)",
        turns=sent,
        client_statuses=outcome,
        rows_lost=sent - written,
        rows_with_negative_tokens=negative,
    )


def cross_key(p: Probe) -> None:
    """Key b (another person of the same team) names key a's response in every way a client can."""
    with httpx.Client(base_url=p.url, timeout=30) as client:
        made = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "secret"}, headers=p.auth("a"))
        rid = made.json()["id"]
        attempts = {
            "retrieve": client.get(f"/v1/responses/{rid}", headers=p.auth("b")).status_code,
            "input_items": client.get(f"/v1/responses/{rid}/input_items", headers=p.auth("b")).status_code,
            "cancel": client.post(f"/v1/responses/{rid}/cancel", headers=p.auth("b")).status_code,
            "previous_response_id (HTTP)": client.post(
                "/v1/responses",
                json={"model": "gpt-5.5", "input": "more", "previous_response_id": rid},
                headers=p.auth("b"),
            ).status_code,
            "never issued": client.get("/v1/responses/resp_0000", headers=p.auth("b")).status_code,
        }
        url = p.url.replace("http://", "ws://") + "/v1/responses"
        with ws_connect(url, additional_headers=p.auth("b")) as sock:
            frame = {
                "type": "response.create",
                "model": "gpt-5.5",
                "input": "ws",
                "previous_response_id": rid,
            }
            sock.send(json.dumps(frame))
            while (event := json.loads(sock.recv(timeout=10)))["type"] not in ("response.completed", "error"):
                pass
            attempts["previous_response_id (WebSocket)"] = event.get("status", 200)
        attempts["delete"] = client.delete(f"/v1/responses/{rid}", headers=p.auth("b")).status_code
    leaked = sum(1 for name, status in attempts.items() if name != "never issued" and status < 400)
    p.record("cross_key_response_access", "1", attempts=attempts, served_to_the_other_key=leaked)


async def _parallel(url: str, headers: dict[str, str], n: int, body: dict[str, Any]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        calls = [client.post("/v1/responses", json=body, headers=headers) for _ in range(n)]
        return [r.status_code for r in await asyncio.gather(*calls)]


def limit_races(p: Probe) -> None:
    # imported here: Django needs django.setup(), which runs once the environment is set
    from proxy.governance import limits
    from proxy.models import ApiKey, RequestLog

    p.fake.head_delay = 1.0  # every admitted turn is still in flight while the others ask
    body = {"model": "gpt-5.5", "input": "race"}
    budget = asyncio.run(_parallel(p.url, p.auth("budget"), 20, body))
    p.fake.head_delay = 0.0
    rpm_limit = 10 * p.scale
    rpm = asyncio.run(_parallel(p.url, p.auth("rpm"), 3 * rpm_limit, body))
    time.sleep(1.5)
    team = ApiKey.objects.get(name="@budget").team
    spent = RequestLog.objects.filter(team=team).exclude(cost=None).values_list("cost", flat=True)
    p.record(
        "limit_races",
        "7 (budget), 11/17c (rate)",
        budget_turns_in_parallel=20,
        budget_usd=str(team.daily_budget),
        budget_admitted=budget.count(200),
        budget_spent_usd=f"{sum(spent, Decimal(0)):.6f}",
        budget_estimate_usd_per_turn=f"{limits.reservation(_prices(), 'gpt-5.5', (10, 8192)) / 1e6:.4f}",
        rpm_limit=rpm_limit,
        rpm_parallel=3 * rpm_limit,
        rpm_admitted=rpm.count(200),
    )


def _prices() -> dict:
    # imported here: Django needs django.setup(), which runs once the environment is set
    from proxy.governance.prices import model_prices

    return model_prices.get()


def _median_turn_during(p: Probe, flood: Any, turns: int) -> tuple[float, Any]:
    """The median of ``turns`` sequential turns while ``flood`` (a coroutine function) runs."""

    async def both() -> tuple[list[float], Any]:
        task = asyncio.create_task(flood())
        await asyncio.sleep(0.2)
        times = []
        async with httpx.AsyncClient(base_url=p.url, timeout=60) as client:
            for _ in range(turns):
                started = time.perf_counter()
                await client.post(
                    "/v1/responses", json={"model": "gpt-5.5", "input": "t"}, headers=p.auth("a")
                )
                times.append((time.perf_counter() - started) * 1000)
        return times, await task

    times, result = asyncio.run(both())
    return statistics.median(times), result


async def _probes(
    url: str, path: str, n: int, at_once: int, headers: dict[str, str] | None = None
) -> Counter:
    limits = httpx.Limits(max_connections=at_once)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one() -> int | str:
            try:
                return (await client.get(path, headers=headers)).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        return Counter(await asyncio.gather(*(one() for _ in range(n))))


def floods(p: Probe) -> None:
    turns = 20
    with httpx.Client(base_url=p.url, timeout=30) as client:
        for i in range(200 * p.scale):  # made-up model names: the label series they may make
            client.post("/v1/responses", json={"model": f"made-up-{i}", "input": "x"}, headers=p.auth("a"))
        quiet = statistics.median(p.turn_ms(client) for _ in range(turns))
        size = len(client.get("/metrics").content)
    scrapes = 100 * p.scale
    metrics_ms, metrics = _median_turn_during(p, lambda: _probes(p.url, "/metrics", scrapes, 25), turns)
    readyz_n = 600 * p.scale
    readyz_ms, readyz = _median_turn_during(p, lambda: _probes(p.url, "/readyz", readyz_n, 100), turns)
    p.record(
        "floods",
        "4 (/metrics), 10 (/readyz)",
        median_turn_ms_quiet=round(quiet, 1),
        metrics_bytes_after_200_made_up_models=size,
        metrics_scrapes=scrapes,
        metrics_statuses=dict(metrics),
        median_turn_ms_during_metrics_flood=round(metrics_ms, 1),
        readyz_probes=readyz_n,
        readyz_statuses=dict(readyz),
        median_turn_ms_during_readyz_flood=round(readyz_ms, 1),
    )


def anonymous_flood(p: Probe) -> None:
    # imported here: Django needs django.setup(), which runs once the environment is set
    from proxy.models import RequestLog

    n = 800 * p.scale
    before = RequestLog.objects.filter(api_key=None).count()
    with httpx.Client(base_url=p.url, timeout=30) as client:
        for i in range(n):
            address = f"10.9.{i // 256 % 256}.{i % 256}"
            client.get("/v1/models", headers={"x-forwarded-for": address, "authorization": "Bearer nope"})
    time.sleep(2)
    written = RequestLog.objects.filter(api_key=None).count() - before
    p.record("anonymous_flood", "17b", requests=n, addresses=min(n, 65536), rows_written=written)


def locked_database(p: Probe) -> None:
    """Another process holds the SQLite database with BEGIN EXCLUSIVE while turns run."""
    n = 30 * p.scale
    before = p.settled_rows()
    locker = sqlite3.connect(p.data / "sluice.sqlite3", timeout=10)
    locker.execute("BEGIN EXCLUSIVE")
    degraded_seen = False
    started = time.monotonic()
    with httpx.Client(base_url=p.url, timeout=30) as client:
        for i in range(n):
            client.post("/v1/responses", json={"model": "gpt-5.5", "input": f"l{i}"}, headers=p.auth("a"))
            degraded_seen |= "request_log" in client.get("/readyz").text
            time.sleep(p.lock_seconds / n / 2)
        while time.monotonic() - started < p.lock_seconds:
            time.sleep(0.5)
            degraded_seen |= "request_log" in client.get("/readyz").text
    locker.rollback()
    locker.close()
    written = p.wait_rows(before + n, timeout=60) - before
    with httpx.Client(base_url=p.url, timeout=30) as client:
        after = client.get("/readyz").json()["status"]
    p.record(
        "locked_database",
        "9",
        lock_seconds=p.lock_seconds,
        turns=n,
        rows_lost=n - written,
        readyz_degraded_while_locked=degraded_seen,
        readyz_after=after,
    )


def csv_exports(p: Probe) -> None:
    """Client strings that start like formulas, through both exports of the dashboard."""
    # imported here: Django needs django.setup(), which runs once the environment is set
    import csv
    import io

    from proxy.admin import dashboard

    with httpx.Client(base_url=p.url, timeout=30) as client:
        for payload in ("=HYPERLINK(1)", "+1", "-1+1", "@SUM(1)"):
            body = {"model": "gpt-5.5", "input": "x", "prompt_cache_key": f"{payload}session"}
            client.post("/v1/responses", json=body, headers=p.auth("a"))
    time.sleep(1)
    filters = dashboard.parse_filters({})
    exports = [dashboard.rows_csv(filters), dashboard.aggregates_csv(dashboard.usage(filters))]
    cells = [
        c
        for export in exports
        for row in csv.reader(io.StringIO(b"".join(export.streaming_content).decode()))
        for c in row
    ]
    formulas = [c for c in cells if c.startswith(FORMULA)]
    p.record("csv_exports", "8", cells=len(cells), cells_starting_a_formula=len(formulas))


SECTIONS = [http_fuzz, ws_fuzz, faulted_turns, cross_key, limit_races, floods, anonymous_flood, csv_exports]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="multiplies every count (default 1)")
    parser.add_argument("--lock-seconds", type=float, default=30.0, help="how long the database is locked")
    parser.add_argument("--only", nargs="*", help="section names to run (default: all)")
    args = parser.parse_args()
    probe = Probe(args.scale, args.lock_seconds)
    started = time.monotonic()
    probe.setup()
    try:
        for section in [*SECTIONS, locked_database]:
            if not args.only or section.__name__ in args.only:
                section(probe)
    finally:
        probe.stop()
    print(f"\nprobe took {time.monotonic() - started:.0f} s", flush=True)
    print(json.dumps(probe.figures, default=str))


if __name__ == "__main__":
    main()
