"""A circuit breaker per provider, its state in Django's cache so every process skips a failing upstream."""

import time

from django.conf import settings

from providers import metrics, signals
from settings_app import shared


def breaker_key(provider_id: int) -> str:
    return f"sluice:breaker:{provider_id}"


def is_open(state: dict | None) -> bool:
    return bool(state) and state.get("open_until", 0) > time.time()


async def record_failure(provider_id: int) -> None:
    key = breaker_key(provider_id)
    state = await shared.aget(key) or {"failures": 0, "open_until": 0}
    state["failures"] += 1
    if state["failures"] >= settings.SLUICE_BREAKER_THRESHOLD:
        state["open_until"] = time.time() + settings.SLUICE_BREAKER_COOLDOWN
        state["failures"] = 0
        metrics.breaker_opened(provider_id, state["open_until"])
        signals.breaker_changed.send_robust(sender=None, provider_id=provider_id, opened=True)
    await shared.aset(key, state, settings.SLUICE_BREAKER_COOLDOWN * 10)


async def record_success(provider_id: int, state: dict | None) -> None:
    """Clear the breaker; ``state`` is what routing read, so a healthy provider costs no cache write."""
    if state:
        await shared.adelete(breaker_key(provider_id))
        metrics.breaker_closed(provider_id)
        if state.get("open_until"):  # it had opened, not merely counted a failure
            signals.breaker_changed.send_robust(sender=None, provider_id=provider_id, opened=False)
