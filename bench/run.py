"""The gateway's overhead against a direct connection to the same upstream: ``python -m bench [--quick]``.

Starts the fake upstream and the gateway (``manage.py serve``, embedded defaults, a data directory of its
own), then drives HTTP SSE and WebSocket turns at each concurrency and answer size, direct and through the
gateway in alternating batches. Writes bench/results/<time>.json and, for a full run, docs/performance.md
with docs/performance.png; prints the budget, line by line.
"""

import argparse
import asyncio
import json
import os
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import uvloop

from bench import procstat, report
from bench.client import SseConnection, WsConnection
from bench.fleet import FleetSettings, fleet_table, measure_fleet
from bench.idle import IdleSockets, idle_websockets
from bench.load import CHAIN_TURNS, HOST, SCENARIOS, Scenario, Target, http_request, run_scenario, ws_frame
from bench.processes import REPO, Server, configure_gateway, running_gateway, start_upstream
from bench.upstream import API_KEY as UPSTREAM_KEY

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs"


@dataclass(frozen=True)
class Settings:
    pairs: int
    batch_seconds: float
    warmup_seconds: float
    idle_connections: int
    settle_seconds: float  # quiet time before a memory reading


FULL = Settings(pairs=5, batch_seconds=2.0, warmup_seconds=1.0, idle_connections=2000, settle_seconds=1.5)
QUICK = Settings(pairs=2, batch_seconds=0.5, warmup_seconds=0.3, idle_connections=500, settle_seconds=0.5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of under 40 s; docs are not written"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only scenarios whose name contains TEXT (e.g. websocket-c50); repeatable; docs not written",
    )
    parser.add_argument("--pairs", type=int, help="direct/gateway batch pairs per scenario")
    parser.add_argument("--batch-seconds", type=float, help="length of one batch")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle WebSocket memory test")
    parser.add_argument(
        "--no-fleet", action="store_true", help="skip the throughput through nginx (1 and 2 nodes)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the gateway's data directory and log")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="RESULTS_JSON",
        help="a full run of an earlier commit: the page compares this run with it, scenario by scenario",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: write docs/performance.md and the chart again from a full run's raw results",
    )
    return parser.parse_args(argv)


def raise_fd_limit() -> None:
    """Room for thousands of sockets, in this process and (inherited) in the servers it starts."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_started = time.monotonic()


def say(line: str) -> None:
    print(f"[{time.monotonic() - _started:5.0f} s] {line}" if line else "", flush=True)


async def check_turns(gateway: Target, direct: Target) -> None:
    """One turn per transport on each target, so that a broken set-up fails before any figure is taken."""
    for target in (direct, gateway):
        sse = await SseConnection.open(HOST, target.port)
        http = await sse.turn(http_request(target, "bench-8"))
        sse.close()
        ws = await WsConnection.open(
            HOST, target.port, target.path, {"authorization": f"Bearer {target.api_key}"}
        )
        first = await ws.turn(ws_frame("bench-8", None))
        chained = await ws.turn(ws_frame("bench-8", first.response_id))
        ws.close()
        for name, turn in (("HTTP", http), ("WebSocket", first), ("chained WebSocket", chained)):
            if not (turn.ok and turn.events == 8):
                raise RuntimeError(f"{name} turn against {target.name} failed: {turn}")


def targets(upstream: Server, gateway: Server, key: str) -> tuple[Target, Target]:
    return (
        Target("direct", upstream.port, UPSTREAM_KEY, "/v1/responses"),
        Target("gateway", gateway.port, key, "/v1/responses"),
    )


async def measure_idle_sockets(
    settings: Settings, upstream: Server, gateway: Server, key: str
) -> dict[str, IdleSockets]:
    """Memory per idle client WebSocket, on a gateway process of its own so no earlier load skews it."""
    direct, through = targets(upstream, gateway, key)
    await check_turns(through, direct)
    count, settle = settings.idle_connections, settings.settle_seconds
    say(f"opening {count} idle WebSockets to a fresh gateway (pid {gateway.pid}), then to the upstream")
    found = {
        "idle_sockets": await idle_websockets(through, gateway.pid, count, settle),
        "idle_sockets_direct": await idle_websockets(direct, upstream.pid, count, settle),
    }
    say(
        f"  per idle WebSocket: {found['idle_sockets'].per_connected / report.KIB:.1f} KiB connected, "
        f"{found['idle_sockets'].per_after_turn / report.KIB:.1f} KiB after one turn"
    )
    return found


def selected(only: list[str]) -> list[Scenario]:
    return [s for s in SCENARIOS if not only or any(text in s.name for text in only)]


async def measure_load(
    settings: Settings,
    only: list[str],
    upstream: Server,
    gateway: Server,
    key: str,
    bare: Server | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    direct, through = targets(upstream, gateway, key)
    await check_turns(through, direct)
    if bare is not None:
        await check_turns(targets(upstream, bare, key)[1], direct)
    await asyncio.sleep(settings.settle_seconds)
    memory: dict[str, Any] = {"idle_start_bytes": procstat.rss_bytes(gateway.pid)}
    say(f"gateway pid {gateway.pid}, idle RSS {memory['idle_start_bytes'] / report.MB:.1f} MB")
    summaries: list[dict[str, Any]] = []
    chosen = selected(only)
    for scenario in chosen:
        twins = {s.name: s for s in chosen}
        if scenario.bare and scenario.name.removesuffix("-bare") in twins:
            continue  # interleaved with its twin's batches, below
        twin = twins.get(f"{scenario.name}-bare")
        say(scenario.label + (" (and without limits, metrics or log, interleaved)" if twin else ""))
        gateways = {"bare": (bare, scenario)} if scenario.bare else {"gateway": (gateway, scenario)}
        if twin is not None:
            gateways["bare"] = (bare, twin)
        runs = await run_scenario(
            scenario,
            (direct, *(Target(name, s.port, key, "/v1/responses") for name, (s, _) in gateways.items())),
            {"upstream": upstream.pid},
            {name: s.pid for name, (s, _) in gateways.items()},
            pairs=settings.pairs,
            seconds=settings.batch_seconds,
            warmup=settings.warmup_seconds,
            progress=say,
        )
        for name, (_, which) in gateways.items():
            runs[name].scenario = which
            summaries.append(report.summarize(runs[name]))
    await asyncio.sleep(settings.settle_seconds)
    memory["idle_end_bytes"] = procstat.rss_bytes(gateway.pid)
    memory["peak_load_bytes"] = max((s["gateway"]["rss_peak_bytes"] for s in summaries), default=0)
    memory["gateway_threads"] = procstat.threads(gateway.pid)
    return summaries, memory


def run(
    args: argparse.Namespace, settings: Settings, data_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Start the upstream, then a fresh gateway for the idle-socket test and another for the load, then
    nginx before one node and before two."""
    upstream = start_upstream()
    try:
        key = configure_gateway(data_dir, upstream.port)
        say(f"fake upstream on :{upstream.port} (pid {upstream.pid}); data in {data_dir}")
        idle_sockets: dict[str, IdleSockets] = {}
        if not args.no_idle:
            with running_gateway(data_dir, "gateway-idle.log") as gateway:
                idle_sockets = uvloop.run(measure_idle_sockets(settings, upstream, gateway, key))
        with running_gateway(data_dir) as gateway, ExitStack() as stack:
            bare = None
            if any(s.bare for s in selected(args.only)):  # a second process, idle but for its scenarios
                bare = stack.enter_context(running_gateway(data_dir, "gateway-bare.log", bare=True))
            summaries, memory = uvloop.run(measure_load(settings, args.only, upstream, gateway, key, bare))
        memory.update(idle_sockets)
        fleet: list[dict[str, Any]] = []
        if not (args.no_fleet or args.only):  # alone: python -m bench.fleet
            say("throughput through nginx, one node then two")
            quick = settings.pairs < FULL.pairs
            fleet_settings = FleetSettings(batches=1 if quick else 3, batch_seconds=settings.batch_seconds)
            fleet = measure_fleet(upstream, data_dir, key, fleet_settings, say)
        return summaries, memory, fleet
    finally:
        upstream.stop()


def write_docs(
    raw: dict[str, Any], summaries: list[dict[str, Any]], memory: dict[str, Any], found: list[report.Check]
) -> None:
    from bench import chart  # matplotlib, of the bench extra, loads only for a run that writes the docs

    machine = raw["machine"]
    DOCS.mkdir(exist_ok=True)
    subtitle = f"{machine['nproc']} × {machine['cpu']}, Python {machine['python']}, {raw['when']}"
    chart.render(summaries, DOCS / "performance.png", subtitle)
    report.write_markdown(
        DOCS / "performance.md",
        command=raw["command"],
        when=raw["when"],
        machine=machine,
        settings=raw["settings"],
        summaries=summaries,
        memory=memory,
        found=found,
        chart="performance.png",
        baseline=raw.get("baseline"),
        current=report.baseline_figures(raw),
        fleet=fleet_table(raw.get("fleet") or []),
    )
    say("wrote docs/performance.md and docs/performance.png")


def render(path: Path) -> int:
    """Docs from a saved full run (after a template change): the figures stay those that were measured."""
    raw = json.loads(path.read_text())
    memory = dict(raw["memory"])
    for name in ("idle_sockets", "idle_sockets_direct"):
        if name in memory:
            memory[name] = IdleSockets(**{f.name: memory[name][f.name] for f in fields(IdleSockets)})
    found = report.checks(raw["scenarios"], memory)
    write_docs(raw, raw["scenarios"], memory, found)
    return 0


def settings_of(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else FULL
    return Settings(
        pairs=args.pairs or base.pairs,
        batch_seconds=args.batch_seconds or base.batch_seconds,
        warmup_seconds=base.warmup_seconds,
        idle_connections=base.idle_connections,
        settle_seconds=base.settle_seconds,
    )


def measured_machine() -> dict[str, Any]:
    """The machine the run measures, with how busy it was just before (other work skews every figure)."""
    busy = procstat.machine_busy()
    machine = {**procstat.machine(REPO), "busy": f"{busy:.0%} of all CPUs in the second before the run"}
    if busy > 0.1:
        say(f"warning: {busy:.0%} of the CPUs were busy before the run; other work skews every figure")
    return machine


def save_results(raw: dict[str, Any], started: float) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_path = RESULTS / time.strftime("%Y%m%dT%H%M%S.json", time.gmtime(started))
    result_path.write_text(json.dumps(raw, indent=1))
    return result_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    settings = settings_of(args)
    documented = not (
        args.quick or args.only or args.pairs or args.batch_seconds or args.no_idle or args.no_fleet
    )
    # Terminated like interrupted (the event loop turns SIGINT into cancellation): unwind, so the upstream
    # and gateway processes are stopped too. A shell's background job starts with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
    raise_fd_limit()
    machine = measured_machine()
    started = time.time()
    data_dir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    try:
        summaries, memory, fleet = run(args, settings, data_dir)
    finally:
        if args.keep:
            say(f"gateway data directory kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)

    found = report.checks(summaries, memory)
    argv_text = shlex.join(argv if argv is not None else sys.argv[1:])
    raw = {
        "command": f".venv/bin/python -m bench {argv_text}".rstrip(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": machine,
        "settings": {**settings.__dict__, "chain_turns": CHAIN_TURNS},
        "memory": {k: v.as_dict() if isinstance(v, IdleSockets) else v for k, v in memory.items()},
        "budget": [{**c.__dict__, "passed": c.passed} for c in found],
        "scenarios": summaries,
        "fleet": fleet,
    }
    if args.baseline:
        raw["baseline"] = report.baseline_figures(json.loads(args.baseline.read_text()))
    result_path = save_results(raw, started)

    say("")
    for line in report.budget_lines(found):
        say(line)
    for line in report.governance_lines(summaries):
        say(line)
    if fleet:
        say("through nginx:\n" + fleet_table(fleet))
    say(f"raw results: {result_path.relative_to(REPO)}")
    if documented:
        write_docs(raw, summaries, memory, found)
    return 0
