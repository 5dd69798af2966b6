"""State shared between processes, through Django's cache, usable from async code without a thread hop.

Django's cache backends implement their async methods as ``sync_to_async`` wrappers that all queue on one
thread. The local-memory cache never blocks, so it is called directly; other backends (Redis) run in the
default thread pool so that concurrent requests do not wait on each other.

Shared state is an optimisation, never a single point of failure: no function here raises. When the cache
fails (Redis stopped, paused, unreachable) a call returns its default at once, the process is *degraded*
(logged once, reported by ``degraded()`` and ``status()``), and for ``SLUICE_CACHE_RETRY_SECONDS`` no call
waits on the cache again; then one call at a time probes it until it answers. Callers treat a default as
"unknown": routing without affinity, breakers closed, configuration from the last snapshot, and limits
counted in the process (``aincr`` returns None).
"""

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

log = logging.getLogger("sluice.shared")

_backend: Any = None
_down_until = 0.0  # monotonic time before which the cache is not tried again
_degraded_since: float | None = None  # wall-clock time of the first failure of this outage
_last_error = ""
_probing = False  # one call at a time tries a cache that failed


def _cache() -> Any:
    # One backend object for the process: local-memory caches share their storage by name and Django's
    # Redis backend shares its connection pool, so the per-thread lookup of ``caches[...]`` is not needed.
    global _backend
    if _backend is None:
        _backend = caches["default"]
    return _backend


def is_local() -> bool:
    """The embedded default: a cache that lives in this process and cannot fail."""
    return isinstance(_cache(), LocMemCache)


_is_local = is_local


def degraded() -> bool:
    """True while the shared cache is failing and this process runs on local state only."""
    return _degraded_since is not None


def status() -> dict[str, Any]:
    """For readiness probes and diagnostics: whether shared state is reachable, since when not, why."""
    return {
        "shared_state": "degraded" if degraded() else "ok",
        "degraded_since": _degraded_since,
        "error": _last_error,
    }


def report_failure(exc: BaseException) -> None:
    """Record a failure of shared state (the cache, or the channel layer on the same Redis)."""
    global _down_until, _degraded_since, _last_error
    _down_until = time.monotonic() + settings.SLUICE_CACHE_RETRY_SECONDS
    _last_error = f"{type(exc).__name__}: {exc}"[:300]
    if _degraded_since is None:
        _degraded_since = time.time()
        log.error(
            "shared state unreachable (%s): serving from this process's last configuration, without "
            "affinity or shared breakers, with limits counted in this process, until it is back",
            _last_error,
        )


def reset() -> None:
    """Forget a past failure (tests: each starts with shared state reachable)."""
    global _down_until, _degraded_since, _last_error, _probing
    _down_until, _degraded_since, _last_error, _probing = 0.0, None, "", False


def _recovered() -> None:
    global _degraded_since, _last_error
    if _degraded_since is not None:
        log.warning("shared state is back after %.1f s", time.time() - _degraded_since)
        _degraded_since, _last_error = None, ""


def _may_try() -> bool:
    """False while the cache is known to be down (no call may wait on it); when its retry time came, the
    first caller probes it and the others keep to their defaults until the probe answered."""
    global _probing
    if _degraded_since is None:
        return True
    if time.monotonic() < _down_until or _probing:
        return False
    _probing = True
    return True


def _guarded(operation: Callable[..., Any], *args: Any, default: Any = None) -> Any:
    global _probing
    try:
        result = operation(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of the cache is the same outage
        report_failure(exc)
        return default
    else:
        _recovered()
        return result
    finally:
        _probing = False


def _run_sync(operation: Callable[..., Any], *args: Any, default: Any = None) -> Any:
    if is_local():
        return operation(*args)
    if not _may_try():
        return default
    return _guarded(operation, *args, default=default)


async def _run(operation: Callable[..., Any], *args: Any, default: Any = None) -> Any:
    if is_local():
        return operation(*args)
    if not _may_try():
        return default
    return await sync_to_async(_guarded, thread_sensitive=False)(operation, *args, default=default)


_UNAVAILABLE = object()


def get(key: str, default: Any = None) -> Any:
    """Synchronous read (management commands, the admin, the log writer)."""
    return _run_sync(_cache().get, key, default, default=default)


def try_get(key: str) -> tuple[bool, Any]:
    """(False, None) when the cache could not be read, else (True, value or None)."""
    value = _run_sync(_cache().get, key, None, default=_UNAVAILABLE)
    return (False, None) if value is _UNAVAILABLE else (True, value)


async def atry_get(key: str) -> tuple[bool, Any]:
    value = await _run(_cache().get, key, None, default=_UNAVAILABLE)
    return (False, None) if value is _UNAVAILABLE else (True, value)


def set(key: str, value: Any, timeout: float | None) -> None:  # noqa: A001 - the cache API's name
    _run_sync(_cache().set, key, value, timeout)


async def aget(key: str, default: Any = None) -> Any:
    return await _run(_cache().get, key, default, default=default)


async def aget_many(keys: Iterable[str]) -> dict[str, Any]:
    return await _run(_cache().get_many, list(keys), default={})


async def aset(key: str, value: Any, timeout: float | None) -> None:
    await _run(_cache().set, key, value, timeout)


async def adelete(key: str) -> None:
    await _run(_cache().delete, key)


def _incr(key: str, delta: int, timeout: float | None) -> int:
    cache = _cache()
    if cache.add(key, delta, timeout):
        return delta
    try:
        return cache.incr(key, delta)
    except ValueError:  # expired between add and incr
        cache.set(key, delta, timeout)
        return delta


async def aincr(key: str, delta: int = 1, timeout: float | None = None) -> int | None:
    """Add ``delta`` to a shared counter (created with ``timeout``); its new value, or None when shared
    state is unavailable: the caller then counts in its own process."""
    return await _run(_incr, key, delta, timeout, default=None)
