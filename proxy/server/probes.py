"""Liveness and readiness probes.

They are served by the lean /v1 handler (see config/asgi.py): no middleware, so no ALLOWED_HOSTS check
(a probe addresses the pod by its IP) and no session or CSRF work.
"""

import asyncio
import concurrent.futures
import json
import time

from django.core.cache import caches
from django.db import connections
from django.http import HttpRequest, HttpResponse

from proxy.server import lifecycle
from proxy.usage import logwriter, signals
from settings_app import shared

CHECK_TIMEOUT = 3.0
CHECK_EVERY = 1.0  # a flood of probes costs the database one check per second, whatever its size

# The checks' own threads: a probe flood must never queue behind turns (or turns behind it) in the
# thread pool the turns use.
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sluice-readyz")
_last: tuple[float, str, str] | None = None  # when, the database's answer, the cache's
_running: "asyncio.Future[tuple[str, str]] | None" = None  # the check in progress, shared by probes


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n", content_type="text/plain")


def _database() -> None:
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # a probe thread keeps no connection


def _cache() -> None:
    cache = caches["default"]
    cache.set("sluice:readyz", 1, 30)
    if cache.get("sluice:readyz") != 1:
        raise RuntimeError("the cache did not keep a value")


async def _check(check: object) -> str:
    """ "" when the check passes, else what went wrong, in a few words."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await asyncio.get_running_loop().run_in_executor(_executor, check)  # type: ignore[arg-type]
    except TimeoutError:
        return f"no answer in {CHECK_TIMEOUT:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return ""


async def readyz(request: HttpRequest) -> HttpResponse:
    """200 when this process can serve, 503 with what is down when it cannot (no database, or draining).

    The shared cache (Redis) is an optimisation, not a single point of failure: without it the process
    serves from its last configuration snapshot with limits counted locally, so a failing cache makes it
    "degraded" (200, named in the body) rather than unready. Taking every node out of the balancer at once
    because Redis went away would turn a degraded fleet into a dead one."""
    database, cache = await _checked()
    down = {"database": database} if database else {}
    if lifecycle.draining():
        down["lifecycle"] = "draining"
    degraded = {"cache": cache} if cache else {}
    if waiting := logwriter.waiting():
        degraded["request_log"] = waiting
    if shared.degraded() and not cache:
        degraded["cache"] = str(shared.status()["error"] or "recently unreachable")
    status = "down" if down else "degraded" if degraded else "ok"
    if down:
        signals.readiness_lost.send_robust(sender=None, down=down)
    body = {"status": status, "down": down, "degraded": degraded}
    return HttpResponse(json.dumps(body) + "\n", status=503 if down else 200, content_type="application/json")


async def _checked() -> tuple[str, str]:
    """The database's and the cache's answers, at most ``CHECK_EVERY`` seconds old; probes that arrive
    while a check runs wait for that one instead of starting their own."""
    global _last, _running
    if _last is not None and time.monotonic() - _last[0] < CHECK_EVERY:
        return _last[1], _last[2]
    loop = asyncio.get_running_loop()
    if _running is None or _running.done() or _running.get_loop() is not loop:
        _running = asyncio.ensure_future(_check_both())
    return await asyncio.shield(_running)


async def _check_both() -> tuple[str, str]:
    global _last
    database, cache = await asyncio.gather(_check(_database), _check(_cache))
    _last = (time.monotonic(), database, cache)
    return database, cache
