"""The events WebSocket consumer, in process: membership is re-checked while events flow."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connections

from apps.accounts.models import Membership, Organization
from inventiv import consumers
from inventiv.events import org_group


@pytest.mark.django_db(transaction=True)
async def test_someone_removed_from_an_organization_stops_receiving_its_events(
    owner: Any, stranger: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    # Given Sam, a member of Olivia's organization, watching its events
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    org = await Organization.objects.aget(memberships__user=owner, personal=True)
    await Membership.objects.acreate(user=stranger, organization=org, role="member")
    monkeypatch.setattr(consumers, "MEMBERSHIP_RECHECK_S", 0.0)
    communicator = WebsocketCommunicator(consumers.EventsConsumer.as_asgi(), "/ws/events/")
    communicator.scope["user"] = stranger
    connected, _ = await communicator.connect()
    assert connected
    subscribed = await communicator.receive_json_from()
    assert org_group(org.id) in subscribed["data"]["groups"]
    layer = get_channel_layer()
    event = {
        "type": "event.message",
        "event": "EVENT:INSTANCE_READY",
        "data": {"organization_id": org.id},
    }
    await layer.group_send(org_group(org.id), event)
    assert (await communicator.receive_json_from())["event"] == "EVENT:INSTANCE_READY"
    # When Sam is removed from the organization
    await Membership.objects.filter(user=stranger, organization=org).adelete()
    await layer.group_send(org_group(org.id), event)
    # Then the next event does not reach him
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()
    # The consumer's database thread keeps a connection: close it so the test DB can be dropped
    await database_sync_to_async(connections.close_all)()
