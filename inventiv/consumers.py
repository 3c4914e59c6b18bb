"""WebSocket consumers. Permission is checked per subscribed group, on the server."""

from __future__ import annotations

import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from apps.accounts.auth import SSO_SESSION_KEY
from apps.accounts.selectors import organization_ids_for_user
from inventiv.events import STAFF_GROUP, org_group


@database_sync_to_async
def _organization_ids(user: Any, session: Any) -> list[int]:
    # A session signed in with a password does not reach organizations requiring single sign-on.
    sso = bool(session.get(SSO_SESSION_KEY, False)) if session is not None else None
    return organization_ids_for_user(user=user, sso=sso)


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
        self.org_ids = set(await _organization_ids(user, self.scope.get("session")))
        self.checked_at = time.monotonic()
        groups = [org_group(org_id) for org_id in sorted(self.org_ids)]
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

    async def _still_member(self, organization_id: int) -> bool:
        if time.monotonic() - self.checked_at > settings.WS_MEMBERSHIP_RECHECK_S:
            current = set(await _organization_ids(self.scope["user"], self.scope.get("session")))
            for lost in self.org_ids - current:
                group = org_group(lost)
                await self.channel_layer.group_discard(group, self.channel_name)
                if group in self.groups_joined:
                    self.groups_joined.remove(group)
            self.org_ids &= current
            self.checked_at = time.monotonic()
        return organization_id in self.org_ids

    async def event_message(self, message: dict[str, Any]) -> None:
        data = message["data"]
        organization_id = data.get("organization_id") if isinstance(data, dict) else None
        if (
            organization_id is not None
            and not self.scope["user"].is_staff
            and not await self._still_member(organization_id)
        ):
            return
        await self.send_json({"event": message["event"], "data": data})
