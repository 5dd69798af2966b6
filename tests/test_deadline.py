"""The upstream silence deadline: it cancels the waiting task at the latest limit it was given, earlier
or later than the one it was armed with."""

import asyncio
import time

import pytest

from proxy.common.deadline import Deadline


async def cancelled_after(armed: float, extensions: list[tuple[float, float]]) -> float | None:
    """Arm a deadline, extend it (after a pause, to a limit) as listed, and wait: the seconds until it
    cancelled the task, or None if it did not within 3 s."""
    started = time.monotonic()
    deadline = Deadline(armed)
    try:
        for pause, seconds in extensions:
            await asyncio.sleep(pause)
            deadline.extend(seconds)
        await asyncio.sleep(3)
    except asyncio.CancelledError:
        assert deadline.expired
        return time.monotonic() - started
    finally:
        deadline.cancel()
    return None


@pytest.mark.parametrize(
    ("armed", "extensions", "low", "high"),
    [
        (0.1, [], 0.1, 0.6),  # as armed
        (5.0, [(0.0, 0.1)], 0.1, 0.6),  # a shorter limit than the armed one: brought forward
        (0.1, [(0.05, 0.3)], 0.35, 0.9),  # a longer one: pushed back
        (5.0, [(0.0, 0.1), (0.05, 0.1), (0.05, 0.1)], 0.2, 0.8),  # kept alive by events, then silence
    ],
)
async def test_the_deadline_fires_at_the_latest_limit(armed, extensions, low, high):
    took = await cancelled_after(armed, extensions)
    assert took is not None and low <= took < high, took


async def test_a_cancelled_deadline_never_fires():
    deadline = Deadline(0.05)
    deadline.cancel()
    await asyncio.sleep(0.2)
    assert not deadline.expired


async def test_the_deadline_takes_back_only_its_own_cancellation():
    """After it fired and was handled, the task is no longer "cancelling" (an ``asyncio.timeout`` later in
    the same task would not turn into ``TimeoutError``); a cancellation by someone else (an interrupt, a
    client that left) stays pending for its owner."""
    task = asyncio.current_task()
    assert task is not None
    deadline = Deadline(0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(1)
    deadline.cancel()
    assert deadline.expired and task.cancelling() == 0
    deadline = Deadline(5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(1)
    deadline.cancel()
    assert not deadline.expired and task.cancelling() == 1
    task.uncancel()
