"""Key creation and rotation, counted per person in Django's cache (shared by every process on Redis)."""

from __future__ import annotations

import time

from django.core.cache import cache

KEY_CHANGES = 10  # keys made or rotated per person ...
WINDOW_SECONDS = 3600  # ... per hour


def allow(user_id: int) -> bool:
    """Count one key change of the person; False once they made ``KEY_CHANGES`` in this window."""
    name = f"portal:key-changes:{user_id}:{int(time.time() // WINDOW_SECONDS)}"
    cache.add(name, 0, WINDOW_SECONDS)
    try:
        count = cache.incr(name)
    except ValueError:  # expired between add and incr: this is the window's first
        cache.set(name, 1, WINDOW_SECONDS)
        count = 1
    return count <= KEY_CHANGES
