"""Who is acting: set once where a change enters Sluice (a web request, a command, SCIM, a timer).

Model signals know what changed but not who changed it; the audit log reads the actor from here. This
module imports only the standard library, so every app may set the actor without importing the audit app.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass


class Source:
    ADMIN = "admin"
    PORTAL = "portal"
    CLI = "cli"
    SCIM = "scim"
    SIGN_IN = "sign-in"
    SYSTEM = "system"
    API = "api"


@dataclass(frozen=True)
class Actor:
    """``name`` is what the audit row shows: a username, ``cli:<login>``, ``scim`` or ``system``."""

    name: str
    source: str
    user_id: int | None = None
    client_ip: str = ""
    request_id: str = ""


SYSTEM = Actor(name="system", source=Source.SYSTEM)
_current: contextvars.ContextVar[Actor] = contextvars.ContextVar("sluice_actor", default=SYSTEM)


def current() -> Actor:
    return _current.get()


@contextlib.contextmanager
def acting(actor: Actor) -> Iterator[Actor]:
    """Changes made inside the block are recorded as ``actor``'s."""
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)
