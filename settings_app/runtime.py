"""Process-local snapshots of database configuration that every process refreshes within seconds.

A snapshot is loaded from the database once and kept in memory; each change bumps a version that every
process on the deployment can read: in Django's cache when it is shared (Redis), and in a file of the data
directory on the embedded default (whose local-memory cache no other process sees, while ``manage.py``
commands and the server share that directory and its SQLite database). Readers look at that version at
most once per ``SLUICE_CONFIG_POLL_SECONDS`` and reload when it moved, so the hot path costs no database
or cache round trip and a change made anywhere reaches every process within a few seconds, without a
restart. When the shared cache fails, the last snapshot keeps being served.
"""

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections, transaction

from settings_app import shared

T = TypeVar("T")

log = logging.getLogger("sluice.config")

_VERSION_PREFIX = "sluice:config-version:"


def _version_file(name: str) -> Path:
    return Path(settings.DATA_DIR) / "config-versions" / name


def _write_version(name: str, version: str) -> None:
    if not shared.is_local():
        shared.set(_VERSION_PREFIX + name, version, None)
        return
    path = _version_file(name)
    try:
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_name(f".{name}.{os.getpid()}")
        temporary.write_text(version)
        os.replace(temporary, path)  # readers see the old version or the new one, never half a file
    except OSError as exc:
        log.error("could not publish the new %s version to other processes: %r", name, exc)


def read_version(name: str) -> tuple[bool, object]:
    """(readable, version) of snapshot ``name`` as every process sees it; a few microseconds on the
    embedded default (one small file), one cache call otherwise."""
    if not shared.is_local():
        return shared.try_get(_VERSION_PREFIX + name)
    try:
        return True, _version_file(name).read_text()
    except FileNotFoundError:
        return True, None
    except OSError:
        return False, None


async def aread_version(name: str) -> tuple[bool, object]:
    if not shared.is_local():
        return await shared.atry_get(_VERSION_PREFIX + name)
    return read_version(name)


def bump_version(name: str) -> None:
    """Mark the snapshot ``name`` stale in every process, once the current transaction commits."""

    def bump() -> None:
        _write_version(name, uuid.uuid4().hex)
        snapshot = _registry.get(name)
        if snapshot is not None:
            snapshot.invalidate()

    transaction.on_commit(bump)


class Snapshot(Generic[T]):
    def __init__(
        self,
        name: str,
        loader: Callable[[], T],
        *,
        register: bool = True,
        on_change: Callable[[T, T], None] | None = None,
    ) -> None:
        self.name = name
        self._loader = loader
        self._on_change = on_change  # called in the event loop with (old, new) after a reload
        self._value: T | None = None
        self._version: object = None
        self._fresh_until = float("-inf")
        if register:  # registered snapshots are refreshed at once after a change made in this process
            _registry[name] = self

    def invalidate(self) -> None:
        self._fresh_until = float("-inf")
        self._invalidated = True

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
        local = self._local_change()
        readable, version = read_version(self.name)
        if self._value is None or (readable and version != self._version) or local:
            self._value = self._loader()
            self._version = version
        self._fresh_until = time.monotonic() + settings.SLUICE_CONFIG_POLL_SECONDS
        return self._value  # type: ignore[return-value]

    async def aget(self) -> T:
        if self._fresh():
            return self._value  # type: ignore[return-value]
        local = self._local_change()
        readable, version = await aread_version(self.name)
        if self._value is None or (readable and version != self._version) or local:
            # With the shared version unreadable (Redis down) the last snapshot stays: configuration
            # cannot be known to have changed, and reloading every poll would load the database instead.
            old = self._value
            self._value = await sync_to_async(self._load_in_worker, thread_sensitive=True)()
            self._version = version
            if old is not None and self._on_change is not None:
                try:
                    self._on_change(old, self._value)
                except Exception:  # noqa: BLE001 - a reaction to a change must not fail the caller
                    log.exception("reacting to a change of %s failed", self.name)
        self._fresh_until = time.monotonic() + settings.SLUICE_CONFIG_POLL_SECONDS
        return self._value  # type: ignore[return-value]

    def _local_change(self) -> bool:
        """This process changed the configuration (the version write may have failed): reload anyway."""
        changed, self._invalidated = self._invalidated, False
        return changed

    _invalidated = False


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
    from settings_app.models import SystemSettings  # imported here: the models need Django's apps loaded

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


async def keep_fresh() -> None:
    """Poll the snapshots this process uses, so changes made elsewhere take effect (revoked keys' sockets
    close) even when no request arrives to read them. Runs for the life of a server."""
    while True:
        await asyncio.sleep(settings.SLUICE_CONFIG_POLL_SECONDS)
        for snapshot in list(_registry.values()):
            if snapshot._value is not None:
                try:
                    await snapshot.aget()
                except Exception:  # noqa: BLE001 - the database may be briefly unavailable: next poll
                    log.warning("could not refresh %s", snapshot.name, exc_info=True)


def refresh_in_background() -> Any:
    """Start ``keep_fresh`` in the running loop; the task, to cancel at shutdown."""
    return asyncio.ensure_future(keep_fresh())
