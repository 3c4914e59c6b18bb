"""A thread-safe in-memory channel layer for the embedded mode.

Channels' ``InMemoryChannelLayer`` keeps ``asyncio.Queue`` objects that belong to the event loop
of the web server. In the embedded mode the Celery worker runs in threads of the same process
and publishes events with ``async_to_sync``, i.e. from other event loops; touching the queues
from there is not thread-safe and may leave a waiting consumer asleep. This layer runs every
call on the loop that first received from it (the server's), and behaves as the parent
otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.layers import InMemoryChannelLayer


class ThreadSafeInMemoryChannelLayer(InMemoryChannelLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._home: asyncio.AbstractEventLoop | None = None

    async def _on_home(self, coro: Any) -> Any:
        loop = asyncio.get_running_loop()
        home = self._home
        if home is None or home is loop or home.is_closed() or not home.is_running():
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, home)
        return await asyncio.wrap_future(future)

    async def receive(self, channel: str) -> Any:
        if self._home is None or self._home.is_closed():
            self._home = asyncio.get_running_loop()
        return await super().receive(channel)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._on_home(super().send(channel, message))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._on_home(super().group_send(group, message))

    async def group_add(self, group: str, channel: str) -> None:
        await self._on_home(super().group_add(group, channel))

    async def group_discard(self, group: str, channel: str) -> None:
        await self._on_home(super().group_discard(group, channel))
