"""ASGI entry point: /v1 HTTP to the lean API handler, everything else HTTP to Django, and WebSockets on
/v1/responses to the Channels consumer."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from proxy.consumers import NotFoundConsumer, ResponsesConsumer  # noqa: E402
from proxy.handler import ApiHandler  # noqa: E402

api_application = ApiHandler()


async def http_application(scope: dict, receive: object, send: object) -> None:
    if scope["path"].startswith("/v1/"):
        await api_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": URLRouter(
            [
                path("v1/responses", ResponsesConsumer.as_asgi()),
                re_path(r"^.*$", NotFoundConsumer.as_asgi()),
            ]
        ),
    }
)
