"""Reads for instances, tenant-filtered inside the query."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.core.cache import cache
from django.db.models import QuerySet

from apps.accounts.models import User
from apps.accounts.selectors import organization_ids_for_user
from apps.instances.models import Instance
from inventiv.errors import NotFound


def instance_list_for_user(*, user: User) -> QuerySet[Instance]:
    return (
        Instance.objects.filter(organization_id__in=organization_ids_for_user(user=user))
        .select_related("organization", "llm_model", "provider", "instance_type")
        .order_by("-created_at")
    )


def instance_get_for_user(*, user: User, instance_id: str) -> Instance:
    try:
        instance = instance_list_for_user(user=user).filter(id=instance_id).first()
    except Exception:  # a malformed UUID is just "not found"
        instance = None
    if instance is None:
        raise NotFound("No such instance.")
    return instance


# --- Liveness: the heartbeat lease -------------------------------------------------------------
# Each heartbeat renews its instance's lease in the cache (Redis in production; the embedded
# mode's in-process cache), while ``last_heartbeat_at`` in the database is rewritten only every
# ``heartbeat_persist_s()`` (apps/instances/agents/services.py). The last beat is the later of
# the two: the reconciler selects in SQL the instances whose recorded beat is past the deadline,
# then reads the leases of those few only.
HEARTBEAT_LEASE_PREFIX = "agent-beat:"


def heartbeat_lease_key(instance_id: object) -> str:
    return f"{HEARTBEAT_LEASE_PREFIX}{instance_id}"


def heartbeat_persist_s() -> float:
    """How stale ``last_heartbeat_at`` may be in the database: a third of the heartbeat
    deadline, at most 10 s (the autoscaler reads metrics of the last 30 s), so that a live
    instance's recorded beat is never past the deadline."""
    return min(settings.HEARTBEAT_DEADLINE_S / 3, 10.0)


def instance_last_beats(instance_ids: Iterable[object]) -> dict[str, float]:
    """The heartbeat leases of these instances (epoch seconds; absent: no lease, for instance
    after a cache flush — the database's ``last_heartbeat_at`` is then the one to trust)."""
    keys = {heartbeat_lease_key(i): str(i) for i in instance_ids}
    if not keys:
        return {}
    found = cache.get_many(list(keys))
    return {keys[k]: float(v) for k, v in found.items() if v is not None}
