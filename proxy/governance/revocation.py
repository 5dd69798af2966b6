"""Revocation of a key's live sockets: each WebSocket joins its key's channel-layer group, and a key that
stops serving (disabled, deleted, expired, its team disabled, its owner deactivated) is told to close there,
in every process (``revoke_everywhere``, after the admin's save commits) or in this one (``revoke_here``,
when the key snapshot reloads)."""

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def key_group(key_id: int) -> str:
    return f"sluice.key.{key_id}"


def revoke_everywhere(key_id: int) -> None:
    """Close the live sockets of a revoked key in every process, through the channel layer."""
    layer = get_channel_layer()
    if layer is None:
        return

    def send() -> None:
        try:
            async_to_sync(layer.group_send)(key_group(key_id), {"type": "sluice.revoke"})
        except Exception:  # noqa: BLE001 - revocation must not break the admin save
            logging.getLogger("sluice").warning(
                "could not signal revocation of key %s", key_id, exc_info=True
            )

    transaction.on_commit(send)


def revoke_here(key_id: int) -> None:
    """Close this process's live sockets of a key (from the event loop; a no-op without one)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = loop.create_task(layer.group_send(key_group(key_id), {"type": "sluice.revoke"}))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # failures were logged by the layer
