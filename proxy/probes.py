"""Liveness and readiness probes.

They are served by the lean /v1 handler (see config/asgi.py): no middleware, so no ALLOWED_HOSTS check
(a probe addresses the pod by its IP) and no session or CSRF work.
"""

import asyncio
import json

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.db import connections
from django.http import HttpRequest, HttpResponse

from proxy import lifecycle

CHECK_TIMEOUT = 3.0


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
            await sync_to_async(check, thread_sensitive=False)()  # type: ignore[arg-type]
    except TimeoutError:
        return f"no answer in {CHECK_TIMEOUT:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return ""


async def readyz(request: HttpRequest) -> HttpResponse:
    """200 when this process can serve: database and cache answer and it is not draining; else 503 with
    what is down."""
    checks = {"database": _database, "cache": _cache}
    results = await asyncio.gather(*(_check(check) for check in checks.values()))
    down = {name: result for name, result in zip(checks, results, strict=True) if result}
    if lifecycle.draining():
        down["lifecycle"] = "draining"
    body = {"status": "down" if down else "ok", "down": down}
    return HttpResponse(json.dumps(body) + "\n", status=503 if down else 200, content_type="application/json")
