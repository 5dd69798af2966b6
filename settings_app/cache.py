"""The embedded default cache: Django's local-memory cache without per-call key validation.

Django checks every character of every key for memcached compatibility on each call; the gateway's keys
are its own (prefix, ids, response ids) and that check was a measurable share of a turn's CPU."""

from django.core.cache.backends.locmem import LocMemCache


class LocalMemoryCache(LocMemCache):
    def validate_key(self, key: str) -> None:
        return None
