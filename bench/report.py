"""From batches to figures: percentiles, gateway minus direct, the budget, and docs/performance.md."""

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.idle import IdleSockets
from bench.load import Batch, Interleaved

MB = 1_000_000
KIB = 1024
TEMPLATE = Path(__file__).with_name("performance.md.tmpl")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; ``q`` in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float) -> float:
    return seconds * 1000


def side(batches: list[Batch]) -> dict[str, Any]:
    """One target's figures over all its measured batches."""
    turns = sum(b.turns for b in batches)
    seconds = sum(b.seconds for b in batches)
    first = [t for b in batches for t in b.first_event]
    terminal = [t for b in batches for t in b.terminal]
    cpu: dict[str, float] = {}
    for batch in batches:
        for name, value in batch.cpu.items():
            cpu[name] = cpu.get(name, 0.0) + value
    per_turn = {name: ms(value) / turns if turns else float("nan") for name, value in cpu.items()}
    return {
        "turns": turns,
        "errors": sum(b.errors for b in batches),
        "seconds": seconds,
        "turns_per_s": turns / seconds if seconds else 0.0,
        "first_event_ms": {"p50": ms(percentile(first, 50)), "p99": ms(percentile(first, 99))},
        "terminal_ms": {"p50": ms(percentile(terminal, 50)), "p99": ms(percentile(terminal, 99))},
        "cpu_ms_per_turn": per_turn,
        "total_cpu_ms_per_turn": sum(per_turn.values()),
        "rss_peak_bytes": max((b.rss_peak for b in batches), default=0),
    }


def summarize(run: Interleaved) -> dict[str, Any]:
    scenario = run.scenario
    direct = side([b for b in run.batches if b.target == "direct"])
    gateway = side([b for b in run.batches if b.target == "gateway"])
    gateway["cpu_ms_per_turn"]["gateway"] = ms(run.gateway_cpu) / gateway["turns"]
    gateway["log_thread_cpu_ms_per_turn"] = ms(run.log_thread_cpu) / gateway["turns"]
    gateway["total_cpu_ms_per_turn"] = sum(gateway["cpu_ms_per_turn"].values())
    added: dict[str, dict[str, float]] = {}
    ratio: dict[str, Any] = {}
    for metric in ("first_event_ms", "terminal_ms"):
        added[metric] = {q: gateway[metric][q] - direct[metric][q] for q in ("p50", "p99")}
        ratio[metric] = {q: gateway[metric][q] / direct[metric][q] for q in ("p50", "p99")}
    ratio["throughput"] = gateway["turns_per_s"] / direct["turns_per_s"] if direct["turns_per_s"] else 0.0
    # Closed-loop clients: C / throughput is the mean turn time, so this is the mean time a turn gained.
    c = scenario.concurrency
    added["mean_turn_ms"] = ms(c / gateway["turns_per_s"] - c / direct["turns_per_s"])
    added["total_cpu_ms_per_turn"] = gateway["total_cpu_ms_per_turn"] - direct["total_cpu_ms_per_turn"]
    ratio["total_cpu_per_turn"] = gateway["total_cpu_ms_per_turn"] / direct["total_cpu_ms_per_turn"]
    return {
        "scenario": scenario.name,
        "label": scenario.label,
        "transport": scenario.transport,
        "concurrency": scenario.concurrency,
        "events": scenario.events,
        "direct": direct,
        "gateway": gateway,
        "added": added,
        "ratio": ratio,
        "batches": [
            {
                "target": b.target,
                "seconds": b.seconds,
                "turns": b.turns,
                "errors": b.errors,
                "turns_per_s": b.turns / b.seconds if b.seconds else 0.0,
                "cpu_seconds": b.cpu,
                "rss_peak_bytes": b.rss_peak,
            }
            for b in run.batches
        ],
        "samples_ms": {
            target: {
                "first_event": [
                    round(ms(t), 4) for b in run.batches if b.target == target for t in b.first_event
                ],
                "terminal": [round(ms(t), 4) for b in run.batches if b.target == target for t in b.terminal],
            }
            for target in ("direct", "gateway")
        },
    }


@dataclass(frozen=True)
class Check:
    label: str
    measured: float
    limit: float
    unit: str
    at_least: bool = False  # a floor (throughput) rather than a ceiling

    @property
    def passed(self) -> bool:
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    @property
    def budget(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.limit:g} {self.unit}"


KINDS = {"websocket": "WebSocket", "http": "HTTP SSE"}
# The budget of one gateway process on a 2-core machine, per client transport.
ADDED_TERMINAL_MS = {"websocket": (0.5, 2.0), "http": (1.5, 4.0)}  # (p50, p99) at c=1, 8 events
THROUGHPUT_FLOOR = {"websocket": 0.5, "http": 0.3}  # gateway / direct at c=50, 8 events
CPU_MS_PER_TURN = {"websocket": 0.3, "http": 0.8}  # 8 events
IDLE_RSS_MB = 120
IDLE_SOCKET_KIB = 64


def checks(summaries: list[dict[str, Any]], memory: dict[str, Any]) -> list[Check]:
    """The budget, line by line, for the scenarios that were run."""
    by_name = {s["scenario"]: s for s in summaries}
    found: list[Check] = []

    def scenario(transport: str, concurrency: int) -> dict[str, Any] | None:
        return by_name.get(f"{transport}-c{concurrency}-e8")

    for transport, (p50, p99) in ADDED_TERMINAL_MS.items():
        if s := scenario(transport, 1):
            added = s["added"]["terminal_ms"]
            label = f"added time to terminal event, {KINDS[transport]}, 8 events, c=1"
            found.append(Check(f"{label}, p50", added["p50"], p50, "ms"))
            found.append(Check(f"{label}, p99", added["p99"], p99, "ms"))
    for transport, floor in THROUGHPUT_FLOOR.items():
        if s := scenario(transport, 50):
            label = f"throughput vs direct, {KINDS[transport]}, 8 events, c=50"
            found.append(Check(label, s["ratio"]["throughput"], floor, "×", at_least=True))
    for transport, ceiling in CPU_MS_PER_TURN.items():
        for concurrency in (1, 50):
            if s := scenario(transport, concurrency):
                measured = s["gateway"]["cpu_ms_per_turn"]["gateway"]
                label = f"gateway CPU per turn, {KINDS[transport]}, 8 events, c={concurrency}"
                found.append(Check(label, measured, ceiling, "ms"))
    found.append(Check("gateway resident memory, idle", memory["idle_start_bytes"] / MB, IDLE_RSS_MB, "MB"))
    idle: IdleSockets | None = memory.get("idle_sockets")
    if idle is not None:
        found.append(
            Check(
                f"memory per idle client WebSocket ({idle.connections} open, before their first turn)",
                idle.per_connected / KIB,
                IDLE_SOCKET_KIB,
                "KiB",
            )
        )
        found.append(
            Check(
                f"memory per idle client WebSocket ({idle.connections} open, after one turn each)",
                idle.per_after_turn / KIB,
                IDLE_SOCKET_KIB,
                "KiB",
            )
        )
    return found


def governance_lines(summaries: list[dict[str, Any]]) -> list[str]:
    """What limits, metrics and the request log cost per turn: a scenario's gateway CPU less that of its
    ``-bare`` twin (a gateway with SLUICE_BENCHMARK_UNGOVERNED=1), where both were run."""
    by_name = {s["scenario"]: s for s in summaries}
    lines = []
    for name, bare in by_name.items():
        if name.endswith("-bare") and (full := by_name.get(name.removesuffix("-bare"))):
            with_all = full["gateway"]["cpu_ms_per_turn"]["gateway"]
            without = bare["gateway"]["cpu_ms_per_turn"]["gateway"]
            thread = full["gateway"].get("log_thread_cpu_ms_per_turn", 0.0)
            lines.append(
                f"{full['label']}: limits, metrics and request log {with_all - without:+.3f} ms per turn "
                f"(gateway CPU {with_all:.3f} ms with them, {without:.3f} ms without; "
                f"the request log's thread alone {thread:.3f} ms)"
            )
    return lines


def budget_lines(found: list[Check]) -> list[str]:
    width = max(len(c.label) for c in found)
    lines = []
    for c in found:
        verdict = "PASS" if c.passed else "MISS"
        lines.append(f"{verdict}  {c.label:<{width}}  {c.measured:8.3f} {c.unit:<3}  budget {c.budget}")
    return lines


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pair(values: dict[str, float], digits: int = 2) -> str:
    return f"{values['p50']:.{digits}f} / {values['p99']:.{digits}f}"


def latency_table(summaries: list[dict[str, Any]], metric: str) -> str:
    rows = [
        [
            s["label"],
            _pair(s["direct"][metric]),
            _pair(s["gateway"][metric]),
            _pair(s["added"][metric]),
            _pair(s["ratio"][metric]),
        ]
        for s in summaries
    ]
    header = [
        "scenario",
        "direct p50 / p99 (ms)",
        "gateway p50 / p99 (ms)",
        "added p50 / p99 (ms)",
        "ratio p50 / p99",
    ]
    return _table(header, rows)


def throughput_table(summaries: list[dict[str, Any]]) -> str:
    rows = [
        [
            s["label"],
            f"{s['direct']['turns_per_s']:.0f}",
            f"{s['gateway']['turns_per_s']:.0f}",
            f"{s['ratio']['throughput']:.2f}×",
            f"{s['added']['mean_turn_ms']:.2f}",
            f"{s['direct']['turns']} / {s['gateway']['turns']}",
            f"{s['direct']['errors']} / {s['gateway']['errors']}",
        ]
        for s in summaries
    ]
    header = [
        "scenario",
        "direct turns/s",
        "gateway turns/s",
        "ratio",
        "added mean turn (ms)",
        "turns measured (direct / gateway)",
        "errors",
    ]
    return _table(header, rows)


def cpu_table(summaries: list[dict[str, Any]]) -> str:
    rows = []
    for s in summaries:
        direct, gateway = s["direct"]["cpu_ms_per_turn"], s["gateway"]["cpu_ms_per_turn"]
        rows.append(
            [
                s["label"],
                f"{gateway['gateway']:.3f}",
                f"{direct['upstream']:.3f} / {gateway['upstream']:.3f}",
                f"{direct['loadgen']:.3f} / {gateway['loadgen']:.3f}",
                f"{s['direct']['total_cpu_ms_per_turn']:.3f} / {s['gateway']['total_cpu_ms_per_turn']:.3f}",
                f"{s['added']['total_cpu_ms_per_turn']:.3f}",
                f"{s['ratio']['total_cpu_per_turn']:.2f}×",
                f"{s['gateway']['rss_peak_bytes'] / MB:.1f}",
            ]
        )
    header = [
        "scenario",
        "gateway",
        "fake upstream (direct / via gateway)",
        "load generator (direct / via gateway)",
        "all processes (direct / via gateway)",
        "added",
        "ratio",
        "gateway peak RSS (MB)",
    ]
    return _table(header, rows)


def memory_table(memory: dict[str, Any]) -> str:
    rows = [
        [
            "gateway, idle after start-up and one turn per transport",
            f"{memory['idle_start_bytes'] / MB:.1f} MB",
        ],
        ["gateway, peak under load (any scenario)", f"{memory['peak_load_bytes'] / MB:.1f} MB"],
        ["gateway, idle after the run", f"{memory['idle_end_bytes'] / MB:.1f} MB"],
    ]
    for idle, who in (
        (memory.get("idle_sockets"), "gateway"),
        (memory.get("idle_sockets_direct"), "fake upstream"),
    ):
        if idle is None:
            continue
        rows += [
            [
                f"{who}, per idle client WebSocket, {idle.connections} open, before their first turn",
                f"{idle.per_connected / KIB:.1f} KiB",
            ],
            [
                f"{who}, per idle client WebSocket, {idle.connections} open, after one turn each",
                f"{idle.per_after_turn / KIB:.1f} KiB",
            ],
        ]
    return _table(["what", "resident memory"], rows)


def budget_table(found: list[Check]) -> str:
    return _table(
        ["budget line", "measured", "budget", ""],
        [
            [c.label, f"{c.measured:.3f} {c.unit}", c.budget, "PASS" if c.passed else "**MISS**"]
            for c in found
        ],
    )


def baseline_figures(raw: dict[str, Any]) -> dict[str, Any]:
    """What a before-and-after comparison keeps of a run: its commit and a few figures per scenario."""
    return {
        "commit": raw["machine"]["commit"],
        "when": raw["when"],
        "scenarios": {
            s["scenario"]: {
                "label": s["label"],
                "events": s["events"],
                "gateway_cpu_ms": s["gateway"]["cpu_ms_per_turn"]["gateway"],
                "added_terminal_p50_ms": s["added"]["terminal_ms"]["p50"],
                "throughput_ratio": s["ratio"]["throughput"],
            }
            for s in raw["scenarios"]
        },
    }


def comparison_table(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """This run against a baseline run of an earlier commit, scenario by scenario."""
    if before is None:
        return "No baseline run was given (`--baseline RESULTS_JSON`)."
    rows = []
    for name, now in after["scenarios"].items():
        then = before["scenarios"].get(name)
        if then is None:
            continue
        per_event = f"{now['gateway_cpu_ms'] / now['events'] * 1000:.1f} µs"
        per_event_then = f"{then['gateway_cpu_ms'] / then['events'] * 1000:.1f} µs"
        rows.append(
            [
                now["label"],
                f"{then['gateway_cpu_ms']:.3f} → {now['gateway_cpu_ms']:.3f}",
                f"{per_event_then} → {per_event}",
                f"{then['added_terminal_p50_ms']:.2f} → {now['added_terminal_p50_ms']:.2f}",
                f"{then['throughput_ratio']:.2f}× → {now['throughput_ratio']:.2f}×",
            ]
        )
    header = [
        "scenario",
        "gateway CPU per turn (ms)",
        "gateway CPU per event",
        "added time to terminal event, p50 (ms)",
        "throughput vs direct",
    ]
    intro = (
        f"Baseline: commit `{before['commit']}`, run on {before['when']}; "
        f"this run: commit `{after['commit']}`.\n\n"
    )
    return intro + _table(header, rows)


def write_markdown(
    path: Path,
    *,
    command: str,
    when: str,
    machine: dict[str, str],
    settings: dict[str, Any],
    summaries: list[dict[str, Any]],
    memory: dict[str, Any],
    found: list[Check],
    chart: str,
    baseline: dict[str, Any] | None = None,
    current: dict[str, Any] | None = None,
    fleet: str = "",
) -> None:
    machine_rows = [
        ["CPUs (nproc)", machine["nproc"]],
        ["CPU model", machine["cpu"]],
        ["memory", machine["memory"]],
        ["kernel", machine["kernel"]],
        ["Python", machine["python"]],
        ["packages", machine["packages"]],
        ["gateway commit", f"`{machine['commit']}`"],
        ["other load", machine["busy"]],
    ]
    text = string.Template(TEMPLATE.read_text()).substitute(
        command=command,
        when=when,
        machine=_table(["", ""], machine_rows),
        pairs=settings["pairs"],
        batch_seconds=f"{settings['batch_seconds']:g}",
        warmup_seconds=f"{settings['warmup_seconds']:g}",
        chain_turns=settings["chain_turns"],
        idle_connections=settings["idle_connections"],
        budget=budget_table(found),
        terminal=latency_table(summaries, "terminal_ms"),
        first_event=latency_table(summaries, "first_event_ms"),
        throughput=throughput_table(summaries),
        cpu=cpu_table(summaries),
        governance="\n".join(f"- {line}" for line in governance_lines(summaries)) or "(not measured)",
        memory=memory_table(memory),
        chart=chart,
        comparison=comparison_table(baseline, current) if current else "",
        fleet=fleet or "(not measured in this run)",
    )
    path.write_text(text)
