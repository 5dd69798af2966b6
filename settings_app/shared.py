"""State shared between processes, through Django's cache, usable from async code without a thread hop.

Django's cache backends implement their async methods as ``sync_to_async`` wrappers that all queue on one
thread. The local-memory cache never blocks, so it is called directly; other backends (Redis) run in the
default thread pool so that concurrent requests do not wait on each other.
"""

from collections.abc import Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

_backend: Any = None


def _cache() -> Any:
    # One backend object for the process: local-memory caches share their storage by name and Django's
    # Redis backend shares its connection pool, so the per-thread lookup of ``caches[...]`` is not needed.
    global _backend
    if _backend is None:
        _backend = caches["default"]
    return _backend


def _is_local() -> bool:
    return isinstance(_cache(), LocMemCache)


async def aget(key: str, default: Any = None) -> Any:
    if _is_local():
        return _cache().get(key, default)
    return await sync_to_async(_cache().get, thread_sensitive=False)(key, default)


async def aget_many(keys: Iterable[str]) -> dict[str, Any]:
    keys = list(keys)
    if _is_local():
        return _cache().get_many(keys)
    return await sync_to_async(_cache().get_many, thread_sensitive=False)(keys)


async def aset(key: str, value: Any, timeout: float | None) -> None:
    if _is_local():
        _cache().set(key, value, timeout)
    else:
        await sync_to_async(_cache().set, thread_sensitive=False)(key, value, timeout)


async def adelete(key: str) -> None:
    if _is_local():
        _cache().delete(key)
    else:
        await sync_to_async(_cache().delete, thread_sensitive=False)(key)
