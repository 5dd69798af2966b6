"""Scenarios and the load that drives them: turns on C connections at once, in timed batches, against the
fake upstream directly and through the gateway, the two interleaved."""

import asyncio
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from time import perf_counter

from bench import procstat
from bench.client import ConnectionLost, SseConnection, Turn, WsConnection

HOST = "127.0.0.1"
LOG_THREAD = "sluice-request-log"  # the gateway's request-log writer thread (proxy.usage.logwriter)
# Long agent loops chain many turns on one socket; a new conversation (full input, no previous id) starts
# after this many, as a client would, so the gateway's per-connection history stays realistic in size.
CHAIN_TURNS = 100
INSTRUCTIONS = (
    "You are a coding agent running in a sandboxed workspace. Read files before editing them, keep changes "
    "small, run the tests after every change and report what you changed and why. "
) * 6
FIRST_INPUT = [
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": INSTRUCTIONS}]},
    {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Summarise the repository."}],
    },
]
NEXT_INPUT = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Go on."}]}]


@dataclass(frozen=True)
class Scenario:
    transport: str  # "http" or "websocket"
    concurrency: int
    events: int
    # Against a second gateway started with SLUICE_BENCHMARK_UNGOVERNED=1: no limits, metrics or request
    # log, so that the difference from the same scenario without it is what those cost per turn.
    bare: bool = False

    @property
    def name(self) -> str:
        return f"{self.transport}-c{self.concurrency}-e{self.events}" + ("-bare" if self.bare else "")

    @property
    def label(self) -> str:
        kind = "WebSocket" if self.transport == "websocket" else "HTTP SSE"
        bare = ", no limits, metrics or log" if self.bare else ""
        return f"{kind}, c={self.concurrency}, {self.events} events{bare}"

    @property
    def model(self) -> str:
        return f"bench-{self.events}"


SCENARIOS = tuple(
    scenario
    for transport in ("websocket", "http")
    for events in (8, 200)
    for concurrency in (1, 50)
    for scenario in (
        (Scenario(transport, concurrency, events), Scenario(transport, concurrency, events, bare=True))
        if (concurrency, events) == (1, 8)
        else (Scenario(transport, concurrency, events),)
    )
)


@dataclass(frozen=True)
class Target:
    """Where turns go: ``direct`` to the fake upstream, or ``gateway``."""

    name: str
    port: int
    api_key: str
    path: str  # the Responses endpoint on that port


def http_request(target: Target, model: str) -> bytes:
    body = json.dumps({"model": model, "input": FIRST_INPUT, "stream": True, "store": False}).encode()
    head = (
        f"POST {target.path} HTTP/1.1\r\nhost: {HOST}:{target.port}\r\n"
        f"authorization: Bearer {target.api_key}\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def ws_frame(model: str, previous: str | None) -> bytes:
    frame: dict[str, object] = {"type": "response.create", "model": model, "store": False}
    if previous:
        frame["previous_response_id"] = previous
        frame["input"] = NEXT_INPUT
    else:
        frame["input"] = FIRST_INPUT
    return json.dumps(frame).encode()


class HttpWorker:
    """One client on one keep-alive connection, sending the same request turn after turn."""

    def __init__(self, target: Target, scenario: Scenario) -> None:
        self.target = target
        self.request = http_request(target, scenario.model)
        self.connection: SseConnection | None = None

    async def connect(self) -> None:
        self.connection = await SseConnection.open(HOST, self.target.port)

    async def turn(self) -> Turn:
        if self.connection is None or self.connection.closed:
            await self.connect()
        assert self.connection is not None
        return await self.connection.turn(self.request)

    def chain_broken(self) -> None:
        pass

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


class WsWorker:
    """One client on one persistent socket, each turn continuing the last with ``previous_response_id``."""

    def __init__(self, target: Target, scenario: Scenario) -> None:
        self.target = target
        self.model = scenario.model
        self.connection: WsConnection | None = None
        self.previous: str | None = None
        self.chained = 0

    async def connect(self) -> None:
        headers = {"authorization": f"Bearer {self.target.api_key}"}
        self.connection = await WsConnection.open(HOST, self.target.port, self.target.path, headers)
        self.previous = None

    async def turn(self) -> Turn:
        if self.connection is None or self.connection.closed:
            await self.connect()
        assert self.connection is not None
        if self.chained >= CHAIN_TURNS:
            self.previous, self.chained = None, 0
        turn = await self.connection.turn(ws_frame(self.model, self.previous))
        self.previous = turn.response_id or None
        self.chained += 1
        return turn

    def chain_broken(self) -> None:
        self.previous, self.chained = None, 0

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


Worker = HttpWorker | WsWorker


def new_workers(target: Target, scenario: Scenario) -> list[Worker]:
    kind = WsWorker if scenario.transport == "websocket" else HttpWorker
    return [kind(target, scenario) for _ in range(scenario.concurrency)]


@dataclass
class Batch:
    """Turns of one batch against one target, and what the processes spent on them."""

    target: str
    seconds: float = 0.0
    turns: int = 0
    errors: int = 0
    first_event: list[float] = field(default_factory=list)
    terminal: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds in the batch
    rss_peak: int = 0


async def _drive(worker: Worker, deadline: float, expected_events: int, batch: Batch) -> None:
    while perf_counter() < deadline:
        try:
            turn = await worker.turn()
        except (ConnectionLost, OSError):
            batch.errors += 1
            worker.chain_broken()
            await asyncio.sleep(0.01)
            continue
        if turn.ok and turn.events == expected_events:
            batch.turns += 1
            batch.first_event.append(turn.first_event)
            batch.terminal.append(turn.terminal)
        else:
            batch.errors += 1
            worker.chain_broken()


async def _sample_rss(pid: int, batch: Batch, every: float = 0.1) -> None:
    while True:
        batch.rss_peak = max(batch.rss_peak, procstat.rss_bytes(pid))
        await asyncio.sleep(every)


async def run_batch(
    target: Target,
    workers: list[Worker],
    scenario: Scenario,
    seconds: float,
    pids: dict[str, int],
    rss_of: int | None = None,
) -> Batch:
    """Run turns on every worker until ``seconds`` have passed; each finishes the turn it is in."""
    batch = Batch(target.name)
    gc.collect()
    gc.disable()  # the load generator's own collections would land in one side's figures at random
    sampler = asyncio.ensure_future(_sample_rss(rss_of, batch)) if rss_of else None
    cpu_before = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
    own_before = time.process_time()
    started = perf_counter()
    deadline = started + seconds
    try:
        await asyncio.wait_for(
            asyncio.gather(*(_drive(w, deadline, scenario.events, batch) for w in workers)), seconds + 60
        )
    finally:
        batch.seconds = perf_counter() - started
        batch.cpu = {name: procstat.cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        batch.cpu["loadgen"] = time.process_time() - own_before
        if sampler is not None:
            sampler.cancel()
        gc.enable()
    return batch


async def connect_all(workers: list[Worker], at_once: int = 50) -> None:
    limit = asyncio.Semaphore(at_once)

    async def one(worker: Worker) -> None:
        async with limit:
            await worker.connect()

    await asyncio.gather(*(one(w) for w in workers))


@dataclass
class Interleaved:
    """Every measured batch of one scenario, direct and gateway in alternating order."""

    scenario: Scenario
    batches: list[Batch] = field(default_factory=list)
    # The gateway's CPU from the first measured batch until it has settled after the last: work it defers
    # (the request log is written by a thread, in batches) lands in whichever batch runs next.
    gateway_cpu: float = 0.0
    log_thread_cpu: float = 0.0  # of which the request log's writer thread (rows, roll-up, metrics)


async def run_scenario(
    scenario: Scenario,
    targets: tuple[Target, ...],
    pids: dict[str, int],
    gateway_pids: dict[str, int],
    pairs: int,
    seconds: float,
    warmup: float,
    settle: float = 0.5,
    progress: Callable[[str], None] = print,
) -> dict[str, Interleaved]:
    """Warm every target up, then run ``pairs`` rounds of one batch per target, the order reversed every
    other round. ``targets`` are ``direct`` and one or more gateways, each with its process in
    ``gateway_pids`` (by target name); the result holds, per gateway, its batches and the direct ones,
    its batches named ``gateway``, and the gateway's CPU over the whole measured part."""
    workers = {t.name: new_workers(t, scenario) for t in targets}
    batches: list[Batch] = []
    try:
        for target in targets:
            await connect_all(workers[target.name])
            await run_batch(target, workers[target.name], scenario, warmup, pids)
        cpu = {name: procstat.cpu_seconds(pid) for name, pid in gateway_pids.items()}
        log_cpu = {name: procstat.thread_cpu_seconds(pid, LOG_THREAD) for name, pid in gateway_pids.items()}
        for pair in range(pairs):
            for target in targets if pair % 2 == 0 else targets[::-1]:
                pid = gateway_pids.get(target.name)  # none for direct: the first gateway's idle CPU
                counted = {**pids, "gateway": pid or next(iter(gateway_pids.values()))}
                batch = await run_batch(target, workers[target.name], scenario, seconds, counted, pid)
                batches.append(batch)
                progress(
                    f"  {scenario.name:<22} {target.name:<8} {batch.turns / batch.seconds:9.0f} turns/s"
                    f"  errors {batch.errors}"
                )
        await asyncio.sleep(settle)
        results = {}
        for name, pid in gateway_pids.items():
            result = Interleaved(scenario)
            result.batches = [
                replace(b, target="gateway") if b.target == name else b
                for b in batches
                if b.target in (name, "direct")
            ]
            result.gateway_cpu = procstat.cpu_seconds(pid) - cpu[name]
            result.log_thread_cpu = procstat.thread_cpu_seconds(pid, LOG_THREAD) - log_cpu[name]
            results[name] = result
    finally:
        for group in workers.values():
            for worker in group:
                worker.close()
    return results
