"""Reads for instances, tenant-filtered inside the query."""

from __future__ import annotations

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
