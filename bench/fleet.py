"""Throughput through nginx (deploy/nginx.conf) with one gateway node and with two:
``python -m bench.fleet`` alone, or as part of a full ``python -m bench``.

The nodes are ``manage.py serve`` processes on 127.0.0.1 sharing one Redis (started here, private) and the
benchmark's SQLite database; nginx runs the deployed configuration, only its ``listen`` line and upstream
list being the benchmark's. Each configuration gets the same load (C connections, timed batches) and
reports turns per second; on a machine with few cores the figure says as much about the cores as about
the nodes, so the CPU count is printed beside it.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench.load import HOST, Scenario, Target, connect_all, new_workers, run_batch
from bench.processes import (
    REPO,
    Server,
    configure_gateway,
    free_port,
    gateway_env,
    start_upstream,
    wait_for_port,
)

NGINX_CONF = REPO / "deploy" / "nginx.conf"
FLEET_SCENARIOS = (Scenario("http", 50, 8), Scenario("websocket", 50, 8))


@dataclass(frozen=True)
class FleetSettings:
    nodes: tuple[int, ...] = (1, 2)
    workers: int = 1  # worker processes per node
    batches: int = 3
    batch_seconds: float = 2.0
    warmup_seconds: float = 1.0


@contextmanager
def running_redis(directory: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, 10)
        yield f"redis://{HOST}:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def running_node(data_dir: Path, redis_url: str, workers: int, index: int) -> Iterator[Server]:
    port = free_port()
    log = (data_dir / f"node{index}.log").open("wb")
    command = [sys.executable, "manage.py", "serve", "--no-migrate", "--host", HOST, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", str(workers)],
        cwd=REPO,
        env={**gateway_env(data_dir), "REDIS_URL": redis_url},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"node{index}", process, port, log)
    try:
        wait_for_port(port, process)
        yield server
    finally:
        server.stop()


def nginx_config(directory: Path, port: int, servers: list[int]) -> Path:
    """nginx's main configuration around deploy/nginx.conf, whose `listen 80;` becomes this port."""
    shared = NGINX_CONF.read_text().replace("    listen 80;\n", f"    listen {HOST}:{port};\n")
    (directory / "sluice.conf").write_text(shared)
    upstreams = "".join(f"server {HOST}:{p} max_fails=1 fail_timeout=2s;\n" for p in servers)
    (directory / "sluice-upstreams.conf").write_text(upstreams)
    main = directory / "nginx.conf"
    temps = "".join(
        f"    {name}_temp_path {directory}/{name};\n" for name in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log;\n"
        f"events {{ worker_connections 4096; }}\n"
        f"http {{\n    access_log off;\n    client_body_temp_path {directory}/body;\n{temps}"
        f"    include sluice.conf;\n}}\n"
    )
    return main


@contextmanager
def running_nginx(directory: Path, servers: list[int]) -> Iterator[Server]:
    directory.mkdir(exist_ok=True)
    port = free_port()
    main = nginx_config(directory, port, servers)
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    process = subprocess.Popen([binary, "-p", str(directory), "-c", str(main)], stderr=subprocess.DEVNULL)
    server = Server("nginx", process, port)
    try:
        wait_for_port(port, process, 10)
        yield server
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(10)


async def throughput(target: Target, scenario: Scenario, settings: FleetSettings) -> dict[str, Any]:
    """Turns per second of each batch, after a warm-up, on C connections through ``target``."""
    workers = new_workers(target, scenario)
    try:
        await connect_all(workers)
        await run_batch(target, workers, scenario, settings.warmup_seconds, {})
        batches = [
            await run_batch(target, workers, scenario, settings.batch_seconds, {})
            for _ in range(settings.batches)
        ]
    finally:
        for worker in workers:
            worker.close()
    rates = [b.turns / b.seconds for b in batches]
    return {
        "scenario": scenario.name,
        "turns_per_second": statistics.median(rates),
        "batches": rates,
        "errors": sum(b.errors for b in batches),
    }


def measure_fleet(
    upstream: Server, data_dir: Path, key: str, settings: FleetSettings, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """For each node count: start the nodes and nginx, run every fleet scenario, stop them."""
    results: list[dict[str, Any]] = []
    with running_redis(data_dir) as redis_url:
        for count in settings.nodes:
            with ExitStack() as stack:
                nodes = [
                    stack.enter_context(running_node(data_dir, redis_url, settings.workers, i))
                    for i in range(count)
                ]
                nginx = stack.enter_context(
                    running_nginx(data_dir / f"nginx{count}", [n.port for n in nodes])
                )
                target = Target(f"nginx+{count}", nginx.port, key, "/v1/responses")
                for scenario in FLEET_SCENARIOS:
                    found = uvloop.run(throughput(target, scenario, settings))
                    found |= {"nodes": count, "workers_per_node": settings.workers}
                    results.append(found)
                    say(
                        f"  {scenario.name:<20} {count} node(s) through nginx: "
                        f"{found['turns_per_second']:7.0f} turns/s  errors {found['errors']}"
                    )
    return results


def fleet_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per scenario, one column per node count."""
    counts = sorted({r["nodes"] for r in results})
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    by = {(r["scenario"], r["nodes"]): r for r in results}
    header = ["scenario", *(f"{n} node{'s' if n > 1 else ''} (turns/s)" for n in counts)]
    if len(counts) == 2:
        header.append("ratio")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in scenarios:
        cells = [name, *(f"{by[(name, n)]['turns_per_second']:.0f}" for n in counts)]
        if len(counts) == 2:
            first, second = (by[(name, n)]["turns_per_second"] for n in counts)
            cells.append(f"×{second / first:.2f}" if first else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="worker processes per node")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    settings = FleetSettings(workers=args.workers, batches=args.batches, batch_seconds=args.batch_seconds)
    data_dir = Path(tempfile.mkdtemp(prefix="sluice-bench-fleet-"))
    upstream = start_upstream()
    try:
        key = configure_gateway(data_dir, upstream.port)
        print(f"{os.cpu_count()} CPUs; {settings.workers} worker(s) per node; data in {data_dir}", flush=True)
        results = measure_fleet(upstream, data_dir, key, settings)
    finally:
        upstream.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(fleet_table(results))
    out = REPO / "bench" / "results" / time.strftime("fleet-%Y%m%dT%H%M%S.json", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"cpus": os.cpu_count(), "settings": settings.__dict__, "fleet": results}, indent=1)
    )
    print(f"raw results: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
