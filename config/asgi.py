"""ASGI entry point: /v1 HTTP to the lean API handler, everything else HTTP to Django, and WebSockets on
/v1/responses to the Channels consumer."""

import asyncio
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from audit import alerts as audit_alerts  # noqa: E402
from config.urls import PROBE_PATHS  # noqa: E402
from proxy.http.handler import ApiHandler  # noqa: E402
from proxy.upstream.http import close_session  # noqa: E402
from proxy.usage import logwriter, metrics  # noqa: E402
from proxy.ws.consumers import NotFoundConsumer, ResponsesConsumer  # noqa: E402
from settings_app.runtime import refresh_in_background  # noqa: E402

api_application = ApiHandler()


async def http_application(scope: dict, receive: object, send: object) -> None:
    # "/v1" itself too: Django would answer it with an HTML redirect to "/v1/".
    if scope["path"] == "/v1" or scope["path"].startswith("/v1/") or scope["path"] in PROBE_PATHS:
        await api_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)


async def lifespan(scope: dict, receive: Any, send: Any) -> None:
    """At start-up: keep configuration snapshots fresh. At shutdown (after the server let turns in flight
    finish): close upstream connection pools and write the request-log rows still queued."""
    refresher = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            refresher = refresh_in_background()  # changes from other processes apply without a request
            audit_alerts.start(periodic=True)  # and its timers: dropped request-log rows, expiring keys
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if refresher is not None:
                refresher.cancel()
            await close_session()
            if not await asyncio.to_thread(logwriter.flush, 15):
                logwriter.log.error("request log rows were still queued at shutdown")
            await asyncio.to_thread(audit_alerts.flush, 5)  # alerts already decided still go out
            metrics.process_exited()
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "lifespan": lifespan,
        "http": http_application,
        "websocket": URLRouter(
            [
                path("v1/responses", ResponsesConsumer.as_asgi()),
                re_path(r"^.*$", NotFoundConsumer.as_asgi()),
            ]
        ),
    }
)
