"""A deadline for upstream silence that costs a timer handle, not a timer per event."""

import asyncio


class Deadline:
    """How long the upstream may stay silent, re-armed lazily: an event only records the new limit, and
    the timer re-schedules itself when it fires early (an ``asyncio.timeout`` per event costs a timer
    handle each). On expiry the current task is cancelled and ``expired`` tells why."""

    def __init__(self, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.limit = self.loop.time() + seconds
        self.expired = False
        self.handle = self.loop.call_at(self.limit, self._check)

    def extend(self, seconds: float) -> None:
        limit = self.loop.time() + seconds
        if limit < self.handle.when():
            # A shorter limit than the one armed (the idle timeout after the first-byte timeout): the
            # timer must fire at the new limit, not at the old one.
            self.handle.cancel()
            self.handle = self.loop.call_at(limit, self._check)
        self.limit = limit

    def _check(self) -> None:
        if self.loop.time() >= self.limit:
            self.expired = True
            if self.task is not None:
                self.task.cancel()
        else:
            self.handle = self.loop.call_at(self.limit, self._check)

    def cancel(self) -> None:
        self.handle.cancel()
        if self.expired and self.task is not None:
            self.task.uncancel()
