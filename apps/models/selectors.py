"""Reads for model codes, tenant-filtered inside the query."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.accounts.models import User
from apps.accounts.selectors import organization_ids_for_user
from apps.models.models import LlmModel
from inventiv.errors import NotFound


def model_list_for_user(*, user: User) -> QuerySet[LlmModel]:
    return (
        LlmModel.objects.filter(organization_id__in=organization_ids_for_user(user=user))
        .select_related("organization", "provider", "instance_type")
        .order_by("organization_id", "name", "id")
    )


def model_get_for_user(*, user: User, model_code_id: int) -> LlmModel:
    """The model code, if the user belongs to its organization; the same 404 otherwise."""
    model = model_list_for_user(user=user).filter(id=model_code_id).first()
    if model is None:
        raise NotFound("No such model code.")
    return model
