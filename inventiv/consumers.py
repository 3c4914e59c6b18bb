"""WebSocket consumers. Permission is checked per subscribed group, on the server."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from inventiv.events import STAFF_GROUP, org_group


@database_sync_to_async
def _organization_ids(user: Any) -> list[int]:
    from apps.accounts.selectors import organization_ids_for_user

    return organization_ids_for_user(user=user)


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/events/``: streams the events of every organization the user belongs to (and the
    staff group for staff). Anonymous connections are closed with code 4401."""

    groups_joined: list[str]

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.groups_joined = []
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        groups = [org_group(org_id) for org_id in await _organization_ids(user)]
        if user.is_staff:
            groups.append(STAFF_GROUP)
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = groups
        await self.accept()
        await self.send_json({"event": "EVENT:SUBSCRIBED", "data": {"groups": groups}})

    async def disconnect(self, code: int) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def event_message(self, message: dict[str, Any]) -> None:
        await self.send_json({"event": message["event"], "data": message["data"]})
