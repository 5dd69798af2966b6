"""Whose a response is. Every key of the organisation reaches the upstream with the same provider key, so
the upstream cannot tell teams apart: the gateway records who made each response id and refuses the
others as if the id did not exist (the body the upstream gives for an unknown id), without asking it.

A response belongs to the person who owns the key that made it (any of their keys may use it), or to the
key itself when it has no owner. With ``SLUICE_RESPONSE_SHARING=team`` the members of the making key's
team may use it too. The owner is written to the shared cache as soon as the id appears in the stream
(the fast path) and kept for good in the request log's ``owner``, ``api_key`` and ``team`` columns."""

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Q

from proxy.common.wire import WireError
from proxy.models import RequestLog
from settings_app import shared
from settings_app.runtime import tidy_connections

TEAM = "team"  # SLUICE_RESPONSE_SHARING: also the making key's team (the default, "owner": the person)


class ResponseNotFound(WireError):
    """The upstream's 404 for a response id it does not know: an error object whose code is null (the
    request log and the gateway's own log still say ``response_not_found``)."""

    def error_object(self) -> dict[str, Any]:
        return {**super().error_object(), "code": None}


def _key(response_id: str) -> str:
    return f"sluice:resp-owner:{response_id}"


def created_id(data: str) -> str:
    """The response id a ``response.created`` event names ("" when it names none)."""
    try:
        response = json.loads(data).get("response")
    except (ValueError, AttributeError):
        return ""
    return str(response.get("id") or "") if isinstance(response, dict) else ""


async def claim(record: Any, response_id: str) -> None:
    """Record that the turn of ``record`` made ``response_id`` (once per turn), before anyone may use it."""
    if not response_id or record.claimed == response_id or record.key_id is None:
        return
    record.claimed = response_id
    owner = {"u": record.owner_id, "k": record.key_id, "t": record.team_id}
    await shared.aset(_key(response_id), owner, settings.SLUICE_RESPONSE_AFFINITY_TTL)


def _from_log(response_id: str) -> dict[str, Any] | None:
    tidy_connections()
    row = (
        RequestLog.objects.filter(response_id=response_id)
        .filter(Q(api_key__isnull=False) | Q(owner__isnull=False))
        .order_by("created_at")
        .values("owner_id", "api_key_id", "team_id")
        .first()
    )
    if row is None:
        return None
    return {"u": row["owner_id"], "k": row["api_key_id"], "t": row["team_id"]}


async def owner_of(response_id: str) -> dict[str, Any] | None:
    """Who made ``response_id``: the fast path, else the request log (which refills the fast path)."""
    _, found = await shared.atry_get(_key(response_id))
    if isinstance(found, dict):
        return found
    owner = await sync_to_async(_from_log, thread_sensitive=True)(response_id)
    if owner is not None:
        await shared.aset(_key(response_id), owner, settings.SLUICE_RESPONSE_AFFINITY_TTL)
    return owner


def may_use(client: Any, owner: dict[str, Any]) -> bool:
    """Whether ``client`` (an authenticated key) may use a response made by ``owner``."""
    if owner.get("u") is not None:
        mine = owner["u"] == client.owner_id
    else:
        mine = owner.get("k") is not None and owner["k"] == client.key_id
    if mine:
        return True
    return (
        settings.SLUICE_RESPONSE_SHARING == TEAM
        and client.team_id is not None
        and owner.get("t") == client.team_id
    )


def not_found(response_id: object, previous: bool) -> WireError:
    """The upstream's own answer for an id it does not know: for ``previous_response_id`` a 400
    ``previous_response_not_found``, for a path id a 404 whose error has no code."""
    shown = str(response_id)[:200]
    if previous:
        return WireError(
            400,
            "previous_response_not_found",
            f"Previous response with id '{shown}' not found.",
            "previous_response_id",
        )
    return ResponseNotFound(404, "response_not_found", f"Response with id '{shown}' not found.")


async def require(client: Any, response_id: object, *, previous: bool) -> None:
    """Refuse (as not found) a response id that ``client`` did not make, or that nobody made here."""
    owner = await owner_of(response_id) if isinstance(response_id, str) and response_id else None
    if owner is None or not may_use(client, owner):
        raise not_found(response_id, previous)
