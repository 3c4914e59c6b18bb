"""Writes for model codes: their lifecycle (``model_codes``), the scaling policy, quota and the
autoscaler's write (``scaling``), the organization's Hugging Face token (``hub_token``)."""

from apps.models.services.hub_token import hub_token_delete, hub_token_set, hub_token_validate
from apps.models.services.model_codes import (
    EDITABLE,
    ENGINE_FIELDS,
    MAX_REPLICAS,
    ORCHESTRATOR,
    model_create,
    model_decommission,
    model_delete,
    model_deploy,
    model_set_replicas,
    model_transition,
    model_update,
)
from apps.models.services.scaling import (
    POLICY_FIELDS,
    model_autoscale,
    model_set_scaling_policy,
    scaling_quota_set,
    scaling_quota_usage,
)

__all__ = [
    "EDITABLE",
    "ENGINE_FIELDS",
    "MAX_REPLICAS",
    "ORCHESTRATOR",
    "POLICY_FIELDS",
    "hub_token_delete",
    "hub_token_set",
    "hub_token_validate",
    "model_autoscale",
    "model_create",
    "model_decommission",
    "model_delete",
    "model_deploy",
    "model_set_replicas",
    "model_set_scaling_policy",
    "model_transition",
    "model_update",
    "scaling_quota_set",
    "scaling_quota_usage",
]
