"""Changes made through the portal are recorded as the signed-in person's (``audit.context``)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from audit.context import Actor, Source, acting

PREFIX = "/portal/"


class PortalActorMiddleware:
    """Sets the audit actor for the portal's requests; after the authentication middleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if not request.path.startswith(PREFIX) or user is None or not user.is_authenticated:
            return self.get_response(request)
        actor = Actor(
            user.get_username(),
            Source.PORTAL,
            user.pk,
            request.META.get("REMOTE_ADDR", ""),
            request.headers.get("x-request-id", "")[:100],
        )
        with acting(actor):
            return self.get_response(request)
