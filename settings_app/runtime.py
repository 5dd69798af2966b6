"""Process-local snapshots of database configuration that every process refreshes within seconds.

A snapshot is loaded from the database once and kept in memory; each change bumps a version stored in
Django's cache (shared between processes when it is Redis). Readers look at that version at most once per
``SLUICE_CONFIG_POLL_SECONDS`` and reload when it moved, so the hot path costs no database or cache round
trip and a change made in the admin reaches every process within a few seconds, without a restart.
"""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.db import connections, transaction

from settings_app import shared

T = TypeVar("T")

_VERSION_PREFIX = "sluice:config-version:"


def bump_version(name: str) -> None:
    """Mark the snapshot ``name`` stale in every process, once the current transaction commits."""

    def bump() -> None:
        caches["default"].set(_VERSION_PREFIX + name, uuid.uuid4().hex, None)
        snapshot = _registry.get(name)
        if snapshot is not None:
            snapshot.invalidate()

    transaction.on_commit(bump)


class Snapshot(Generic[T]):
    def __init__(self, name: str, loader: Callable[[], T], *, register: bool = True) -> None:
        self.name = name
        self._loader = loader
        self._value: T | None = None
        self._version: object = None
        self._fresh_until = float("-inf")
        if register:  # registered snapshots are refreshed at once after a change made in this process
            _registry[name] = self

    def invalidate(self) -> None:
        self._fresh_until = float("-inf")

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() < self._fresh_until

    def _load_in_worker(self) -> T:
        tidy_connections()
        try:
            return self._loader()
        finally:
            tidy_connections()

    def get(self) -> T:
        """Synchronous access (management commands, admin, the log writer)."""
        if self._fresh():
            return self._value  # type: ignore[return-value]
        version = caches["default"].get(_VERSION_PREFIX + self.name)
        if self._value is None or version != self._version:
            self._value = self._loader()
            self._version = version
        self._fresh_until = time.monotonic() + settings.SLUICE_CONFIG_POLL_SECONDS
        return self._value  # type: ignore[return-value]

    async def aget(self) -> T:
        if self._fresh():
            return self._value  # type: ignore[return-value]
        version = await shared.aget(_VERSION_PREFIX + self.name)
        if self._value is None or version != self._version:
            self._value = await sync_to_async(self._load_in_worker, thread_sensitive=True)()
            self._version = version
        self._fresh_until = time.monotonic() + settings.SLUICE_CONFIG_POLL_SECONDS
        return self._value  # type: ignore[return-value]


_registry: dict[str, Snapshot] = {}


def tidy_connections() -> None:
    """What request_started/finished do for views, for threads that serve no request: drop this thread's
    database connections that are past CONN_MAX_AGE or broken (never one inside a transaction)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


@dataclass(frozen=True)
class RuntimeSettings:
    client_websockets: bool
    upstream_websockets: bool
    client_websockets_forced: bool
    upstream_websockets_forced: bool


def forced(value: str) -> bool | None:
    """Read an environment override: "on"/"off" (and the usual spellings) force a switch, empty does not."""
    value = value.strip().lower()
    if value in {"1", "on", "true", "yes"}:
        return True
    if value in {"0", "off", "false", "no"}:
        return False
    return None


def _load_settings() -> RuntimeSettings:
    from settings_app.models import SystemSettings

    row = SystemSettings.load()
    client = forced(settings.SLUICE_FORCE_CLIENT_WEBSOCKETS)
    upstream = forced(settings.SLUICE_FORCE_UPSTREAM_WEBSOCKETS)
    return RuntimeSettings(
        client_websockets=row.client_websockets if client is None else client,
        upstream_websockets=row.upstream_websockets if upstream is None else upstream,
        client_websockets_forced=client is not None,
        upstream_websockets_forced=upstream is not None,
    )


system_settings: Snapshot[RuntimeSettings] = Snapshot("settings", _load_settings)


def invalidate_all() -> None:
    """Drop every snapshot in this process (after bulk changes that bypass model signals)."""
    for snapshot in _registry.values():
        snapshot._value = None
        snapshot.invalidate()
