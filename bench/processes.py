"""The processes under test: the fake upstream, and the gateway as it is really served."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.upstream import API_KEY as UPSTREAM_KEY

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode} while starting")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


def start_upstream() -> Server:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", "0"], cwd=REPO, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return Server("upstream", process, port)


def gateway_env(data_dir: Path, bare: bool = False) -> dict[str, str]:
    """Embedded defaults in a data directory of the benchmark's own, whatever the shell or .env says;
    ``bare``: without limits, metrics and the request log (SLUICE_BENCHMARK_UNGOVERNED)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    if bare:
        env["SLUICE_BENCHMARK_UNGOVERNED"] = "1"
    env.update(
        SLUICE_DATA_DIR=str(data_dir),
        DATABASE_URL=f"sqlite:///{data_dir / 'sluice.sqlite3'}",
        REDIS_URL="",
        DEBUG="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def configure_gateway(data_dir: Path, upstream_port: int) -> str:
    """One provider (the fake upstream, WebSocket mode auto) and one client key, which is returned."""
    env = gateway_env(data_dir)
    manage(env, "migrate", "--verbosity", "0")
    manage(
        env,
        "createprovider",
        "--name",
        "bench",
        "--base-url",
        f"http://{HOST}:{upstream_port}/v1",
        "--api-key",
        UPSTREAM_KEY,
        "--websocket",
        "auto",
    )
    return manage(env, "createapikey", "--name", "bench").strip().splitlines()[-1]


@contextmanager
def running_gateway(data_dir: Path, log_name: str = "gateway.log", bare: bool = False) -> Iterator[Server]:
    """A fresh gateway process; on failure the tail of its log goes to stderr."""
    port = free_port()
    log_path = data_dir / log_name
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", HOST, "--port", str(port)],
        cwd=REPO,
        env=gateway_env(data_dir, bare),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server("gateway", process, port, log)
    try:
        wait_for_port(port, process)
        yield server
    except BaseException:
        log.flush()
        print(f"--- {log_name} (tail) ---\n{log_path.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        raise
    finally:
        server.stop()
