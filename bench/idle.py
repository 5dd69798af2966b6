"""Memory per idle client WebSocket: open many, read the server's resident memory, run one turn on each,
read it again, close them all."""

import asyncio
from dataclasses import asdict, dataclass

from bench import procstat
from bench.load import Scenario, Target, WsWorker, connect_all


@dataclass
class IdleSockets:
    target: str
    connections: int
    rss_before: int
    rss_connected: int  # every socket open, none has sent a turn yet
    rss_after_turn: int  # every socket has run one turn (the gateway holds an upstream socket for each)
    rss_after_close: int
    failed_turns: int

    @property
    def per_connected(self) -> float:
        return (self.rss_connected - self.rss_before) / self.connections

    @property
    def per_after_turn(self) -> float:
        return (self.rss_after_turn - self.rss_before) / self.connections

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "per_connected_bytes": self.per_connected,
            "per_after_turn_bytes": self.per_after_turn,
        }


async def idle_websockets(target: Target, pid: int, count: int, settle: float = 1.5) -> IdleSockets:
    scenario = Scenario("websocket", count, 8)
    workers = [WsWorker(target, scenario) for _ in range(count)]
    await asyncio.sleep(settle)
    before = procstat.rss_bytes(pid)
    try:
        await connect_all(workers, at_once=100)
        await asyncio.sleep(settle)
        connected = procstat.rss_bytes(pid)
        limit = asyncio.Semaphore(50)
        failed = 0

        async def one_turn(worker: WsWorker) -> None:
            nonlocal failed
            async with limit:
                turn = await worker.turn()
                failed += not turn.ok

        await asyncio.gather(*(one_turn(w) for w in workers))
        await asyncio.sleep(settle)
        after_turn = procstat.rss_bytes(pid)
    finally:
        for worker in workers:
            worker.close()
    await asyncio.sleep(settle)
    return IdleSockets(target.name, count, before, connected, after_turn, procstat.rss_bytes(pid), failed)
