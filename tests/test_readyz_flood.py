"""A flood of readiness probes costs the database about one check a second, on threads of its own."""

import asyncio
import math
import threading
import time

import httpx
from django.db.backends.signals import connection_created


def test_a_readyz_flood_checks_the_database_about_once_a_second_off_the_turns_pool(gateway):
    opened: list[str] = []

    def count(sender, connection, **kwargs) -> None:
        name = threading.current_thread().name
        if name != "sluice-request-log":
            opened.append(name)

    async def flood() -> list[int]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=20) as client:

            async def probe() -> int:
                return (await client.get("/readyz")).status_code

            return await asyncio.gather(*(probe() for _ in range(300)))

    httpx.get(gateway.url + "/readyz", timeout=10)  # the first check, before counting
    connection_created.connect(count)
    try:
        started = time.monotonic()
        statuses = asyncio.run(flood())
        took = time.monotonic() - started
    finally:
        connection_created.disconnect(count)
    assert statuses == [200] * 300
    # One check per second of the flood at most (its first second included), and probes share it.
    assert 1 <= len(opened) <= math.ceil(took) + 2, (len(opened), took)
    assert all(name.startswith("sluice-readyz") for name in opened), set(opened)
