"""The chart in docs/performance.md: added latency and throughput ratio, one bar group per scenario, with
the budget marked where a scenario has one."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from bench.report import ADDED_TERMINAL_MS, THROUGHPUT_FLOOR  # noqa: E402

P50, P99, RATIO, BUDGET = "#3b7dd8", "#f0a030", "#4caf50", "#d03030"
HEIGHT = 0.38


def _label(axes: Any, value: float, y: float, text: str) -> None:
    axes.annotate(text, (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)


def _mark(axes: Any, value: float, y: float, half_height: float) -> None:
    axes.plot([value, value], [y - half_height, y + half_height], color=BUDGET, linewidth=2)


def render(summaries: list[dict[str, Any]], path: Path, subtitle: str) -> None:
    shown = summaries[::-1]  # first scenario at the top
    rows = list(range(len(shown)))
    figure, (latency, throughput) = plt.subplots(
        1, 2, figsize=(13, 0.55 * len(shown) + 2.4), sharey=True, gridspec_kw={"wspace": 0.08}
    )

    for row, s in zip(rows, shown, strict=True):
        added = s["added"]["terminal_ms"]
        latency.barh(row + HEIGHT / 2, added["p50"], HEIGHT, color=P50)
        latency.barh(row - HEIGHT / 2, added["p99"], HEIGHT, color=P99)
        _label(latency, max(added["p50"], 0), row + HEIGHT / 2, f"{added['p50']:.2f}")
        _label(latency, max(added["p99"], 0), row - HEIGHT / 2, f"{added['p99']:.2f}")
        if s["concurrency"] == 1 and s["events"] == 8:
            p50, p99 = ADDED_TERMINAL_MS[s["transport"]]
            _mark(latency, p50, row + HEIGHT / 2, HEIGHT / 2)
            _mark(latency, p99, row - HEIGHT / 2, HEIGHT / 2)

        ratio = s["ratio"]["throughput"]
        throughput.barh(row, ratio, 0.6, color=RATIO)
        _label(throughput, ratio, row, f"{ratio:.2f}×")
        if s["concurrency"] == 50 and s["events"] == 8:
            _mark(throughput, THROUGHPUT_FLOOR[s["transport"]], row, 0.4)

    latency.set_yticks(rows, [s["label"] for s in shown])
    # Added times span sub-millisecond to hundreds of milliseconds: linear below 1 ms, logarithmic above.
    latency.set_xscale("symlog", linthresh=1.0)
    right = max(4.0, max(s["added"]["terminal_ms"]["p99"] for s in shown) * 3)
    ticks = [t for t in (0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if t <= right]
    latency.set_xticks(ticks, [f"{t:g}" for t in ticks])
    latency.set_xlim(left=0, right=right)
    latency.set_xlabel("added time to terminal event, gateway minus direct (ms)")
    latency.axvline(0, color="black", linewidth=0.8)
    legend = [
        Patch(color=P50, label="p50"),
        Patch(color=P99, label="p99"),
        Line2D([], [], color=BUDGET, linewidth=2, label="budget"),
    ]
    latency.legend(handles=legend, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)

    throughput.axvline(1, color="black", linewidth=0.8, linestyle="--")
    throughput.set_xlim(0, max(1.1, max(s["ratio"]["throughput"] for s in shown) * 1.15))
    throughput.set_xlabel("throughput through the gateway / direct (1 = no loss; red: budget floor)")

    figure.suptitle(f"Sluice gateway overhead against a direct connection\n{subtitle}", fontsize=11)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
