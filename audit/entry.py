"""Where changes enter Sluice, each setting who is acting: Django's pages (admin, portal), management
commands and sign-ins. The lean /v1 handler changes nothing an operator configures and sets no actor."""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand
from django.http import HttpRequest, HttpResponse

from audit.chain import record
from audit.context import Actor, Source, acting, current
from audit.models import Action

REQUEST_ID_HEADER = "HTTP_X_REQUEST_ID"
# Commands that serve for the life of the process: their requests and timers set their own actor, and
# must not all be recorded as the person who started the server.
SERVING_COMMANDS = {"serve", "runserver", "runworker", "daphne", "uvicorn"}


def _request_id(request: HttpRequest) -> str:
    given = request.META.get(REQUEST_ID_HEADER, "")
    if given and len(given) <= 64 and given.isprintable():
        return given
    return uuid.uuid4().hex


def request_actor(request: HttpRequest) -> Actor:
    """The person behind a page request. The client address is the one uvicorn already took from the
    trusted proxies' headers (FORWARDED_ALLOW_IPS): REMOTE_ADDR here, never a header a client may forge."""
    user = getattr(request, "user", None)
    signed_in = user is not None and user.is_authenticated
    return Actor(
        name=user.get_username() if signed_in else "anonymous",
        source=Source.ADMIN if request.path.startswith("/admin/") else Source.PORTAL,
        user_id=user.pk if signed_in else None,
        client_ip=request.META.get("REMOTE_ADDR", ""),
        request_id=getattr(request, "audit_request_id", "") or _request_id(request),
    )


class ActorMiddleware:
    """Sets the actor for the rest of the request (after AuthenticationMiddleware) and echoes the request
    id, so an operator can match an audit row with a proxy's or the browser's log."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.audit_request_id = _request_id(request)  # type: ignore[attr-defined]
        with acting(request_actor(request)):
            response = self.get_response(request)
        response["X-Request-ID"] = request.audit_request_id  # type: ignore[attr-defined]
        return response


def wrap_commands() -> None:
    """Every management command runs as ``cli:<login>``: Django's own (createsuperuser, changepassword)
    and every command any app adds, without each having to opt in through a base class. A command called
    from another keeps the caller's actor."""
    if getattr(BaseCommand.execute, "_audit_wrapped", False):
        return
    original = BaseCommand.execute

    def execute(self: BaseCommand, *args: Any, **options: Any) -> Any:
        name = type(self).__module__.rsplit(".", 1)[-1]
        if current().source != Source.SYSTEM or name in SERVING_COMMANDS:
            return original(self, *args, **options)
        actor = Actor(name=f"cli:{_login()}", source=Source.CLI, request_id=uuid.uuid4().hex)
        with acting(actor):
            return original(self, *args, **options)

    execute._audit_wrapped = True  # type: ignore[attr-defined]
    BaseCommand.execute = execute  # type: ignore[method-assign]


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


def signed_in(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    base = request_actor(request) if request is not None else current()
    actor = Actor(user.get_username(), base.source, user.pk, base.client_ip, base.request_id)
    record(Action.SIGN_IN, object_type="auth.User", object_id=user.pk, object_label=str(user), actor=actor)


def signed_out(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    if user is None:  # the session had expired: nobody to name
        return
    base = request_actor(request) if request is not None else current()
    actor = Actor(user.get_username(), base.source, user.pk, base.client_ip, base.request_id)
    record(Action.SIGN_OUT, object_type="auth.User", object_id=user.pk, object_label=str(user), actor=actor)


def sign_in_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    """The name tried is kept (what security asks about); the password never reaches here (Django cleanses
    the credentials it sends)."""
    base = request_actor(request) if request is not None else current()
    tried = str(credentials.get("username") or credentials.get("email") or "")[:150]
    actor = Actor(tried or "anonymous", base.source, None, base.client_ip, base.request_id)
    record(Action.SIGN_IN_FAILED, object_type="auth.User", object_label=tried, actor=actor)
