"""Events (the seed's ``EVENT:*``): published after commit on the Channels layer (Redis pub/sub
in production, in-memory in the embedded mode).

Groups:
* ``org.<organization id>``: an organization's members' browsers (WebSocket ``/ws/events/``);
* ``instances``: every gateway process (routing tables), and staff dashboards;
* ``keys``: every gateway process (API key revocation).

Every message is ``{"type": "event.message", "event": "EVENT:...", "data": {...}}``; each
``data`` has one type below, shared by the publisher and every listener (gateway, browsers).
Publishing never raises: a lost event delays a refresh but the periodic refreshes converge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

INSTANCE_GROUP = "instances"
KEYS_GROUP = "keys"
STAFF_GROUP = "staff"


class InstanceStatusEvent(TypedDict):
    """``EVENT:INSTANCE_<STATUS>``: an instance changed status (``from_status`` is empty for
    the first one, ``provisioning``)."""

    instance_id: str
    organization_id: int
    model_code_id: int
    model_code: str
    status: str
    from_status: str
    reason: str
    at: str  # ISO 8601, UTC


class ModelStatusEvent(TypedDict):
    """``EVENT:MODEL_<STATUS>``: a model code changed status."""

    model_code_id: int
    organization_id: int
    model_code: str
    status: str
    from_status: str
    reason: str
    by: str  # who: a user's e-mail, or "orchestrator"
    at: str


class KeyRevokedEvent(TypedDict):
    """``EVENT:KEY_REVOKED``: every gateway drops the key from its cache. ``EVENT:KEY_CHANGED``
    (same payload: its limits changed) has every gateway re-read it on next use."""

    key_id: int
    lookup_id: str
    organization_id: int
    at: str


class PongEvent(TypedDict):
    """``EVENT:PONG``: the answer of the end-to-end self check (web → worker → WebSocket)."""

    ping_id: str
    sent_at: float
    worker_at: float


class ScalingDecisionEvent(TypedDict):
    """``EVENT:SCALING_DECISION``: the autoscaler changed a model code's desired replicas."""

    decision_id: int
    model_code_id: int
    organization_id: int
    model_code: str
    replicas_before: int
    replicas_after: int
    reason: str
    trigger: str
    at: str


class ScalingPolicyEvent(TypedDict):
    """``EVENT:MODEL_SCALING_POLICY``: a model code's scaling policy changed; the gateways
    reload their routing table (whether it holds requests at zero, for how long)."""

    model_code_id: int
    organization_id: int
    model_code: str
    at: str


class BudgetAlertEvent(TypedDict):
    """``EVENT:BUDGET_ALERT``: a budget crossed a threshold this month (100: the key or the
    organization is blocked until the month's turn or a higher limit)."""

    budget_id: int
    organization_id: int
    api_key_id: int | None
    percent: int
    spend: str  # Decimal, as text
    monthly_limit: str
    currency: str
    at: str


EventData = (
    InstanceStatusEvent
    | ModelStatusEvent
    | KeyRevokedEvent
    | PongEvent
    | ScalingDecisionEvent
    | ScalingPolicyEvent
    | BudgetAlertEvent
)

INSTANCE_EVENT_PREFIX = "EVENT:INSTANCE_"
MODEL_EVENT_PREFIX = "EVENT:MODEL_"
KEY_REVOKED = "EVENT:KEY_REVOKED"
KEY_CHANGED = "EVENT:KEY_CHANGED"
PONG = "EVENT:PONG"
SCALING_DECISION = "EVENT:SCALING_DECISION"
SCALING_POLICY = MODEL_EVENT_PREFIX + "SCALING_POLICY"
BUDGET_ALERT = "EVENT:BUDGET_ALERT"


def org_group(organization_id: int) -> str:
    return f"org.{organization_id}"


def publish_now(groups: Iterable[str], event: str, data: EventData) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message: dict[str, Any] = {"type": "event.message", "event": event, "data": data}
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:  # the layer is best effort; periodic refreshes are the safety net
            logger.exception("could not publish %s to %s", event, group)


def publish_on_commit(groups: Iterable[str], event: str, data: EventData) -> None:
    """Publish once the current transaction commits (at once when there is none)."""
    group_list = list(groups)
    transaction.on_commit(lambda: publish_now(group_list, event, data))
