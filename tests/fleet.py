"""A fleet for the tests: gateway nodes as separate hosts behind Debian's nginx, sharing PostgreSQL and Redis.

Each node is `manage.py serve --workers 2`, as in production, in a network namespace of its own with its own
address on a bridge (iproute2). Where namespaces cannot be made (no root, no CAP_NET_ADMIN) the nodes are
processes on 127.0.0.1 with a port each instead; `Fleet.mode` says which ran. From a namespace, the host's
127.0.0.1 is out of reach: PostgreSQL, Redis and the fake upstreams are reached through relays listening
on the bridge address. nginx runs deploy/nginx.conf itself, only its `listen` line changed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parent.parent
NGINX_CONF = REPO / "deploy" / "nginx.conf"
NODE_PORT = 8000


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Network:
    """A bridge on the host and one namespace per node, each joined to the bridge by a veth pair."""

    def __init__(self, nodes: int) -> None:
        tag = f"{os.getpid() % 100000}"
        subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
        self.bridge = f"slb{tag}"
        self.host_address = f"{subnet}.1"
        self.namespaces = [f"sluice-{tag}-{i}" for i in range(nodes)]
        self.addresses = [f"{subnet}.{i + 2}" for i in range(nodes)]
        self._made: list[tuple[str, ...]] = []

    def create(self) -> None:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", "del", self.bridge))
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (ns, address) in enumerate(zip(self.namespaces, self.addresses, strict=True)):
                outside, inside = f"{self.bridge}v{i}", f"{self.bridge}n{i}"
                _ip("netns", "add", ns)
                self._made.append(("netns", "del", ns))
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
        except (OSError, subprocess.CalledProcessError):
            self.destroy()
            raise

    def destroy(self) -> None:
        for command in reversed(self._made):  # a namespace takes its end of the veth pair with it
            subprocess.run(["ip", *command], capture_output=True)
        self._made.clear()

    def prefix(self, node: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[node]]


class Relay:
    """TCP relays from the bridge address to services listening on the host's 127.0.0.1."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fleet-relay", daemon=True)
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []

    def expose(self, port: int) -> int:
        """Listen on the bridge address (on the same port number when it is free); returns that port."""
        return asyncio.run_coroutine_threadsafe(self._listen(port), self.loop).result(5)

    async def _listen(self, target: int) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            for w in (writer, up_writer):
                w.close()

        try:
            server = await asyncio.start_server(handle, self.host, target)
        except OSError:
            server = await asyncio.start_server(handle, self.host, 0)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()


@dataclass
class Node:
    """One gateway node: `manage.py serve --workers 2` on its own address."""

    index: int
    address: str
    port: int
    prefix: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    terminated: bool = False  # told to stop since its last start

    @property
    def serving(self) -> bool:
        return self.process is not None and self.process.poll() is None and not self.terminated

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "manage.py", "serve", "--no-migrate", "--workers", "2"]
        command += ["--host", self.address, "--port", str(self.port)]
        log = self.log_path.open("ab")
        log.write(f"\n==== start {self.starts + 1} ====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [*self.prefix, *command], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.starts += 1
        self.terminated = False

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"node {self.index} exited while starting:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"node {self.index} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def terminate(self) -> None:
        """SIGTERM: the node starts draining."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.terminated = True

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def restart(self) -> float:
        """Drain, exit, start again, wait until ready; returns how long the node was away."""
        started = time.monotonic()
        self.terminate()
        code = self.wait_exit()
        if code != 0:
            raise RuntimeError(f"node {self.index} exited with {code}:\n{self.log_tail()}")
        self.start()
        self.wait_ready()
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def drained_sockets(self) -> list[int]:
        """Per worker, the client sockets open when its last drain began (from the node's log)."""
        runs = self.log_path.read_text(errors="replace").split("==== start ")
        last_finished = runs[-2] if self.process is not None and self.process.poll() is None else runs[-1]
        return [int(n) for n in re.findall(r"draining: (\d+) client sockets open", last_finished)]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def established(self) -> int:
        """Client connections the node holds now (from nginx), counted on the host's side."""
        done = subprocess.run(
            ["ss", "-Htn", "state", "established", "dst", f"{self.address}:{self.port}"],
            capture_output=True,
            text=True,
        )
        return len([line for line in done.stdout.splitlines() if line.strip()])


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def render_nginx(directory: Path, listen: str, servers: list[str]) -> Path:
    """nginx's main configuration in ``directory``, around deploy/nginx.conf with its listen line changed."""
    shared = NGINX_CONF.read_text()
    if shared.count("    listen 80;\n") != 1:
        raise RuntimeError("deploy/nginx.conf must have exactly one `listen 80;` line")
    (directory / "sluice.conf").write_text(shared.replace("    listen 80;\n", f"    listen {listen};\n"))
    upstreams = "".join(f"server {s} max_fails=1 fail_timeout=2s;\n" for s in servers)
    (directory / "sluice-upstreams.conf").write_text(upstreams)
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / temp).mkdir(exist_ok=True)
    main = directory / "nginx.conf"
    main.write_text(
        f"""daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format fleet '$request_method $uri $status upstream=$upstream_addr';
    access_log {directory}/access.log fleet;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include sluice.conf;
}}
"""
    )
    return main


@dataclass
class Balancer:
    directory: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, servers: list[str]) -> None:
        binary = nginx_binary()
        assert binary is not None
        main = render_nginx(self.directory, f"127.0.0.1:{self.port}", servers)
        check = subprocess.run(
            [binary, "-t", "-p", str(self.directory), "-c", str(main)], capture_output=True
        )
        if check.returncode:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr.decode()}")
        self.process = subprocess.Popen(
            [binary, "-p", str(self.directory), "-c", str(main)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"nginx did not start:\n{self.error_log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def upstreams_used(self) -> list[str]:
        """The node address of each request nginx passed on, in order (from its access log)."""
        path = self.directory / "access.log"
        if not path.exists():
            return []
        return [line.rsplit("upstream=", 1)[1].strip() for line in path.read_text().splitlines()]


@dataclass
class Fleet:
    mode: str  # "namespaces" or "loopback"
    nodes: list[Node]
    balancer: Balancer
    host_address: str  # where the nodes reach the host's services
    relay: Relay | None = None
    network: Network | None = None
    exposed: dict[int, int] = field(default_factory=dict)
    content_types: dict | None = None  # Django's content type ids when the nodes last started

    def reachable(self, port: int) -> int:
        """The port on ``host_address`` that reaches the host's 127.0.0.1:``port``."""
        if self.relay is None:
            return port
        if port not in self.exposed:
            self.exposed[port] = self.relay.expose(port)
        return self.exposed[port]

    def upstream_url(self, port: int) -> str:
        return f"http://{self.host_address}:{self.reachable(port)}/v1"

    @property
    def url(self) -> str:
        return self.balancer.url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.balancer.stop()
        if self.relay is not None:
            self.relay.close()
        if self.network is not None:
            self.network.destroy()


def _service_url(scheme: str, user: str, password: str, host: str, port: int, path: str) -> str:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
    return f"{scheme}://{auth}{host}:{port}/{path}"


# How the fleet ran in this session, for the summary line pytest prints (tests/conftest.py).
MODES_RAN: set[str] = set()


def start_fleet(
    directory: Path,
    database: dict,
    redis_url: str,
    environment: dict[str, str],
    nodes: int = 2,
    namespaces: bool = True,
) -> Fleet:
    """Start ``nodes`` gateway nodes and nginx before them; namespaces where allowed, else loopback."""
    network: Network | None = Network(nodes) if namespaces else None
    try:
        if network is not None:
            network.create()
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or error
        print(f"fleet: network namespaces unavailable ({detail}); nodes run on 127.0.0.1", file=sys.stderr)
        network = None
    host = network.host_address if network is not None else "127.0.0.1"
    MODES_RAN.add("network namespaces" if network is not None else "loopback fallback (127.0.0.1)")
    fleet = Fleet(
        mode="namespaces" if network is not None else "loopback",
        nodes=[],
        balancer=Balancer(directory / "nginx", free_port()),
        host_address=host,
        relay=Relay(host) if network is not None else None,
        network=network,
    )
    try:
        pg_port = fleet.reachable(int(database["PORT"] or 5432))
        redis = httpx.URL(redis_url)
        redis_port = fleet.reachable(redis.port or 6379)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(environment)
        env.update(
            DATABASE_URL=_service_url(
                "postgres", database["USER"], database["PASSWORD"], host, pg_port, database["NAME"]
            ),
            REDIS_URL=_service_url(
                "redis", redis.username, redis.password, host, redis_port, redis.path.lstrip("/")
            ),
            ALLOWED_HOSTS="*",
            PYTHONUNBUFFERED="1",
        )
        (directory / "nginx").mkdir()
        for i in range(nodes):
            data = directory / f"node{i}"
            data.mkdir()
            if network is not None:
                address, port, prefix = network.addresses[i], NODE_PORT, network.prefix(i)
            else:
                address, port, prefix = "127.0.0.1", free_port(), []
            node_env = {**env, "SLUICE_DATA_DIR": str(data)}
            fleet.nodes.append(Node(i, address, port, prefix, node_env, directory / f"node{i}.log"))
        for node in fleet.nodes:
            node.start()
        for node in fleet.nodes:
            node.wait_ready()
        fleet.balancer.start([f"{n.address}:{n.port}" for n in fleet.nodes])
    except BaseException:
        fleet.stop()
        raise
    return fleet


class Admin:
    """The Django admin of one node, signed in: changes made the way an operator makes them."""

    def __init__(self, node: Node, username: str, password: str) -> None:
        self.client = httpx.Client(base_url=node.url, timeout=20)
        page = self.client.get("/admin/login/")
        response = self.client.post(
            "/admin/login/",
            data={"username": username, "password": password, "next": "/admin/", **self._token(page)},
        )
        if response.status_code != 302:
            raise RuntimeError(f"admin sign-in on node {node.index} failed: {response.status_code}")

    @staticmethod
    def _token(page: httpx.Response) -> dict[str, str]:
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        if found is None:
            raise RuntimeError(f"no CSRF token on {page.url} ({page.status_code})")
        return {"csrfmiddlewaretoken": found.group(1)}

    def change(self, path: str, fields: dict[str, str]) -> None:
        """Submit an admin change form (unchecked boxes are simply left out, as a browser does)."""
        page = self.client.get(path)
        response = self.client.post(path, data={**fields, **self._token(page), "_save": "Save"})
        if response.status_code != 302:
            errors = re.findall(r'class="errorlist[^"]*">(.*?)</ul>', response.text, re.S)
            raise RuntimeError(f"admin change of {path} refused ({response.status_code}): {errors}")

    def close(self) -> None:
        self.client.close()
