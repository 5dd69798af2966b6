"""The fault suite: hundreds of faulted turns of each kind through the real server, then nothing is left.

After each batch the server's client connections and tasks, the upstream sockets and streams, the
process's file descriptors (once idle pooled upstream connections are closed), the WebSocket bytes
waiting for the application and the request-log queue are back at their baseline, and every turn that
named a model has its row, with the status its fault should give.
"""

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.conftest import make_provider, request_logs

TURNS = int(os.environ.get("SLUICE_FAULT_TURNS", "100"))  # per transport: twice as many per fault
CONCURRENCY = 40
CREATE = {"type": "response.create", "model": "gpt-5.5", "input": "hi"}
BODY = {"model": "gpt-5.5", "input": "hi", "stream": True}


def counters(gateway, upstream) -> dict[str, int]:
    from proxy.server.ws_protocol import waiting_total
    from proxy.upstream.http import close_session
    from proxy.usage import logwriter

    async def in_server_loop() -> int:
        await close_session()  # idle pooled upstream connections are not leaks; in-use ones stay open
        return len(asyncio.all_tasks())

    loop_tasks = asyncio.run_coroutine_threadsafe(in_server_loop(), gateway.server_loop).result(5)
    logwriter.flush(10)
    return {
        "server connections": len(gateway.server.server_state.connections),
        "server tasks": len(gateway.server.server_state.tasks),
        "server loop tasks": loop_tasks,
        "upstream sockets": upstream.open_ws,
        "upstream streams": upstream.open_http_streams,
        "sockets to the gateway or the upstream": sockets_on((gateway.port, upstream.port)),
        "websocket bytes waiting": waiting_total(),
        "request log queue": logwriter._pending,
    }


def sockets_on(ports: tuple[int, ...]) -> int:
    """This process's TCP sockets (either end, listeners aside) on these ports: the clients', the
    gateway's and the upstream's. Pooled connections to Redis or the database are not counted."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            ours.add(link[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                ends = {int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)}
                if inode in ours and state != "0A" and ends & set(ports):
                    count += 1
    return count


def assert_all(outcomes: list[object], expected: object) -> None:
    """Every turn had the expected outcome; if not, the failure says how many had which."""
    assert Counter(outcomes) == {expected: len(outcomes)}, Counter(outcomes)


def last_error(frames: list[dict]) -> tuple[str, str | None]:
    return frames[-1]["type"], frames[-1].get("error", {}).get("code")


def back_to(baseline: dict[str, int], gateway, upstream, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = counters(gateway, upstream)
        leaked = {k: (baseline[k], v) for k, v in now.items() if v > baseline[k]}  # fewer is no leak
        if not leaked:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"leaked (baseline, now): {leaked}")
        time.sleep(0.1)


def run(turns: int, one: Callable[[int], Awaitable[object]], concurrency: int = CONCURRENCY) -> list[object]:
    async def main() -> list[object]:
        gate = asyncio.Semaphore(concurrency)

        async def bounded(i: int) -> object:
            async with gate:
                return await one(i)

        return await asyncio.gather(*(bounded(i) for i in range(turns)))

    return asyncio.run(main())


def ws_url(gateway) -> str:
    return gateway.url.replace("http://", "ws://") + "/v1/responses"


async def ws_turn(gateway, key: str, frame: str, leave_after_first: bool = False) -> list[dict]:
    """One turn on a new socket; the frames received up to the terminal one (or the first, if leaving)."""
    frames: list[dict] = []
    async with connect(ws_url(gateway), additional_headers={"authorization": f"Bearer {key}"}) as sock:
        await sock.send(frame)
        try:
            while True:
                event = json.loads(await asyncio.wait_for(sock.recv(), 10))
                frames.append(event)
                if leave_after_first:
                    sock.transport.abort()  # gone without a close frame, mid-turn
                    return frames
                if event["type"] in ("response.completed", "response.failed", "error"):
                    return frames
        except websockets.ConnectionClosed:
            return frames


async def sse_turn(client: httpx.AsyncClient, body: dict, leave_after_first: bool = False) -> tuple[int, str]:
    async with client.stream("POST", "/v1/responses", json=body) as response:
        text = ""
        async for chunk in response.aiter_text():
            text += chunk
            if leave_after_first:
                break  # leaving the block closes the connection mid-body
        return response.status_code, text


def http_client(gateway, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=20)


def statuses_since(seen: int, expected: int) -> Counter:
    rows = request_logs(seen + expected)
    assert len(rows) == seen + expected, f"{len(rows) - seen} rows for {expected} turns"
    return Counter(r.status for r in rows[seen:])


@pytest.fixture
def baseline(gateway, upstream, api_key):
    """One turn of each transport first, so lazily created state (pools, snapshots) exists already.
    Deadlines are generous: the clients, the gateway and the upstream share this busy process, and only a
    hanging upstream may time out (its test shortens the first-byte deadline)."""
    provider = make_provider(upstream, first_byte_timeout=10, idle_timeout=10)
    run(1, lambda i: ws_turn(gateway, api_key, json.dumps(CREATE)))

    async def one_sse(i: int) -> object:
        async with http_client(gateway, api_key) as client:
            return await sse_turn(client, BODY)

    run(1, one_sse)
    request_logs(2)
    return provider, counters(gateway, upstream)


def test_clients_that_leave_mid_turn(gateway, upstream, api_key, baseline):
    _, base = baseline
    # Seconds between events: the client is gone long before its turn could end, even on a busy machine
    # (the clients, the gateway and the upstream share this process), and all turns run at once.
    upstream.event_delay = 0.3
    frame = json.dumps(CREATE)
    got = run(TURNS, lambda i: ws_turn(gateway, api_key, frame, leave_after_first=True), TURNS)
    assert_all([frames[0]["type"] if frames else None for frames in got], "response.created")

    async def leave(i: int) -> object:
        async with http_client(gateway, api_key) as client:
            return await sse_turn(client, BODY, leave_after_first=True)

    assert_all([status for status, _ in run(TURNS, leave, TURNS)], 200)
    back_to(base, gateway, upstream)
    assert statuses_since(2, 2 * TURNS) == {499: 2 * TURNS}


def test_upstreams_that_drop_mid_turn(gateway, upstream, api_key, baseline):
    _, base = baseline
    upstream.drop_after_events = 2
    frame = json.dumps(CREATE)
    got = run(TURNS, lambda i: ws_turn(gateway, api_key, frame))
    assert_all([last_error(f) for f in got], ("error", "upstream_stream_error"))

    async def one(i: int) -> object:
        async with http_client(gateway, api_key) as client:
            return await sse_turn(client, BODY)

    assert_all(["upstream_stream_error" in text for _, text in run(TURNS, one)], True)
    back_to(base, gateway, upstream)
    assert statuses_since(2, 2 * TURNS) == {502: 2 * TURNS}


def test_upstreams_that_hang(gateway, upstream, api_key, baseline):
    provider, base = baseline
    provider.first_byte_timeout = 0.3  # nothing ever comes: no turn can beat it, however busy the machine
    provider.save()
    from settings_app.runtime import invalidate_all

    invalidate_all()  # the served gateway runs in this process: take the change now, not at the next poll
    upstream.hang = True
    frame = json.dumps(CREATE)
    got = run(TURNS, lambda i: ws_turn(gateway, api_key, frame))
    assert_all([last_error(f) for f in got], ("error", "upstream_timeout"))

    async def one(i: int) -> object:
        async with http_client(gateway, api_key) as client:
            return await sse_turn(client, BODY)

    assert_all([status for status, _ in run(TURNS, one)], 504)
    back_to(base, gateway, upstream)
    assert statuses_since(2, 2 * TURNS) == {504: 2 * TURNS}


def test_upstreams_that_refuse(gateway, upstream, api_key, baseline):
    _, base = baseline
    upstream.http_fail_status = 503
    upstream.ws_refuse_status = 503
    frame = json.dumps(CREATE)
    got = run(TURNS, lambda i: ws_turn(gateway, api_key, frame))
    assert_all([(f[-1]["type"], f[-1].get("status")) for f in got], ("error", 502))

    async def one(i: int) -> object:
        async with http_client(gateway, api_key) as client:
            return await sse_turn(client, BODY)

    assert_all([status for status, _ in run(TURNS, one)], 502)
    back_to(base, gateway, upstream)
    assert statuses_since(2, 2 * TURNS) == {502: 2 * TURNS}


MALFORMED_BODIES = [
    b"{not json",
    b"[1, 2]",
    b'{"model": "gpt-5.5", "input": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'"\\udc80"',
    b'{"input": "no model"}',
    b'{"model": "gpt-5.5\xff\xfe"}',
]
MALFORMED = [
    "{not json",
    "[1, 2]",
    '{"type": "response.create", "input": ' + "[" * 1000 + "]" * 1000 + "}",
    '{"type": "response.cancel"}',
    '{"type": "response.create", "model": "gpt-5.5", "generate": "yes"}',
    '{"model": "gpt-5.5"}',
    '"\\udc80"',
]


def test_malformed_frames_and_bodies(gateway, upstream, api_key, baseline):
    _, base = baseline

    async def frames(i: int) -> object:
        """Every malformed frame on one socket, then a good turn: the socket survives them all."""
        async with connect(
            ws_url(gateway), additional_headers={"authorization": f"Bearer {api_key}"}
        ) as sock:
            codes = []
            for text in MALFORMED:
                await sock.send(text)
                codes.append(json.loads(await asyncio.wait_for(sock.recv(), 10))["error"]["code"])
            await sock.send(json.dumps(CREATE))
            while json.loads(await asyncio.wait_for(sock.recv(), 10))["type"] != "response.completed":
                pass
            await sock.send(b"\x00binary")  # refused with 1003
            await asyncio.wait_for(sock.wait_closed(), 10)
            return codes, sock.close_code

    got = run(TURNS // len(MALFORMED) * 4, frames)
    assert_all([(code, "internal_error" in codes) for codes, code in got], (1003, False))

    async def bodies(i: int) -> object:
        async with http_client(gateway, api_key) as client:
            response = await client.post("/v1/responses", content=MALFORMED_BODIES[i % len(MALFORMED_BODIES)])
            return response.status_code, response.headers.get("content-type")

    assert_all(run(TURNS, bodies), (400, "application/json"))
    back_to(base, gateway, upstream)
    from proxy.models import RequestLog

    request_logs(2)
    statuses = Counter(RequestLog.objects.order_by("created_at", "pk").values_list("status", flat=True)[2:])
    # The good turns, and refusals (logged as 400 rows, some rate-limited) for the rest.
    assert statuses[200] == len(got) and set(statuses) <= {200, 400}, statuses
