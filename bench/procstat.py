"""What the benchmark reads about processes and the machine, from /proc."""

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of every thread of ``pid`` so far (``/proc/<pid>/stat`` utime + stime)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int, name: str) -> float:
    """CPU time so far of the threads of ``pid`` whose name starts with ``name`` (the kernel keeps 15
    characters of it); 0 when there are none."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if not Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith(name[:15]):
                continue
            total += cpu_seconds_of(Path(f"/proc/{pid}/task/{tid}/stat"))
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return total


def cpu_seconds_of(path: Path) -> float:
    stat = path.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` now (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def machine_busy(seconds: float = 1.0) -> float:
    """The share of all CPUs in use over ``seconds`` (from /proc/stat): other work skews every figure."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy_before, total_before = sample()
    time.sleep(seconds)
    busy_after, total_after = sample()
    return (busy_after - busy_before) / max(1, total_after - total_before)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(repo: Path) -> dict[str, str]:
    """The facts a reader needs to compare these figures with their own."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model(),
        "memory": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ", ".join(
            f"{name} {metadata.version(name)}"
            for name in ("django", "channels", "uvicorn", "websockets", "aiohttp", "uvloop", "httptools")
        ),
        "commit": commit,
    }
