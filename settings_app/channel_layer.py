"""The Redis channel layer, made to degrade like the cache: with Redis gone, sockets stay up.

Channels' consumers wait on the layer for cross-process signals (revocations); the stock layer raises when
Redis is stopped, which ends the consumer and drops its client socket without a close frame, and a group
call on a paused Redis waits for ever. Here a failure is reported to ``settings_app.shared`` (logged once,
seen by ``degraded()``), group calls give up after ``SLUICE_CACHE_TIMEOUT`` and receiving retries quietly.
"""

import asyncio
from typing import Any

from channels_redis.core import RedisChannelLayer
from django.conf import settings

from settings_app import shared


class ResilientRedisChannelLayer(RedisChannelLayer):
    async def receive(self, channel: str) -> dict[str, Any]:
        while True:
            try:
                return await super().receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of Redis is the same outage
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The consumer ended while the layer was reading, and the layer turned the
                    # cancellation into another error: end as cancelled, and it is no outage.
                    raise asyncio.CancelledError() from exc
                shared.report_failure(exc)
                await asyncio.sleep(settings.SLUICE_CACHE_RETRY_SECONDS)

    async def _guard(self, call: Any) -> None:
        try:
            async with asyncio.timeout(max(settings.SLUICE_CACHE_TIMEOUT, 0.05) * 2):
                await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - TimeoutError included: Redis paused
            shared.report_failure(exc)

    async def group_add(self, group: str, channel: str) -> None:
        await self._guard(super().group_add(group, channel))

    async def group_discard(self, group: str, channel: str) -> None:
        await self._guard(super().group_discard(group, channel))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._guard(super().group_send(group, message))
