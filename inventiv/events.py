"""Events (the seed's ``EVENT:*``): published after commit on the Channels layer (Redis pub/sub
in production, in-memory in the embedded mode).

Groups:
* ``org.<organization id>``: an organization's members' browsers (WebSocket ``/ws/events/``);
* ``instances``: every gateway process (routing tables), and staff dashboards;
* ``keys``: every gateway process (API key revocation).

Every message is ``{"type": "event.message", "event": "EVENT:...", "data": {...}}``.
Publishing never raises: a lost event delays a refresh but the periodic refreshes converge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

INSTANCE_GROUP = "instances"
KEYS_GROUP = "keys"
STAFF_GROUP = "staff"


def org_group(organization_id: int) -> str:
    return f"org.{organization_id}"


def publish_now(groups: Iterable[str], event: str, data: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "event.message", "event": event, "data": data}
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:  # the layer is best effort; periodic refreshes are the safety net
            logger.exception("could not publish %s to %s", event, group)


def publish_on_commit(groups: Iterable[str], event: str, data: dict[str, Any]) -> None:
    """Publish once the current transaction commits (at once when there is none)."""
    group_list = list(groups)
    transaction.on_commit(lambda: publish_now(group_list, event, data))
