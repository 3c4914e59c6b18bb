"""The gateway's event listener: applies events from the channel layer to the process's caches.

Joins the groups ``instances`` and ``keys`` (``inventiv.events``):

* ``EVENT:INSTANCE_*`` → applied to the routing table as a delta (``Directory.instance_event``);
* ``EVENT:MODEL_*`` → the routing directory reloads (coalesced);
* ``EVENT:KEY_REVOKED``, ``EVENT:KEY_CHANGED`` → the key cache drops the key (re-read on next
  use).

Guarantees: reconnects forever; after a failure it reloads the directory and empties the key
cache, since events may have been missed meanwhile (the periodic refreshes are the other safety
net). Group membership is renewed hourly, before channels-redis lets it expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.layers import get_channel_layer
from redis.exceptions import TimeoutError as RedisTimeout

from apps.gateway.directory import Directory
from apps.gateway.key_cache import KeyCache
from inventiv.events import (
    INSTANCE_EVENT_PREFIX,
    INSTANCE_GROUP,
    KEY_CHANGED,
    KEY_REVOKED,
    KEYS_GROUP,
    MODEL_EVENT_PREFIX,
)

logger = logging.getLogger("apps.gateway")

_GROUPS = (INSTANCE_GROUP, KEYS_GROUP)
_RENEW_S = 3600  # renew group membership (channels-redis expires it after a day by default)


class EventListener:
    def __init__(self, directory: Directory, keys: KeyCache) -> None:
        self.directory = directory
        self.keys = keys

    def apply(self, message: dict[str, Any]) -> None:
        """One ``{"event": ..., "data": ...}`` message from the layer."""
        event = str(message.get("event", ""))
        data = message.get("data") or {}
        if event in (KEY_REVOKED, KEY_CHANGED):
            self.keys.invalidate(str(data.get("lookup_id", "")))
        elif event.startswith(INSTANCE_EVENT_PREFIX):
            self.directory.instance_event(data)
        elif event.startswith(MODEL_EVENT_PREFIX):
            self.directory.schedule_reload()

    async def run(self) -> None:
        while True:
            layer = get_channel_layer()
            if layer is None:
                return
            try:
                channel = await layer.new_channel("gateway.")
                for group in _GROUPS:
                    await layer.group_add(group, channel)
                joined = time.monotonic()
                while True:
                    try:
                        message = await layer.receive(channel)
                    except RedisTimeout:
                        # channels-redis blocks 5 s in BZPOPMIN, as long as redis-py's read
                        # timeout: an idle wait may time out. Nothing is lost; wait again.
                        continue
                    self.apply(message)
                    if time.monotonic() - joined > _RENEW_S:
                        for group in _GROUPS:
                            await layer.group_add(group, channel)
                        joined = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("gateway event listener failed; reconnecting")
                self.directory.schedule_reload()
                self.keys.invalidate_all()
                await asyncio.sleep(1)
