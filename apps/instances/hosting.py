"""What the model-code side (``apps.models``) may ask of the instances app, and nothing more:
whether a provider may host model codes, which provider would host one, and to converge one
now. ``apps.models`` imports this module and never the services, tasks or orchestrator."""

from __future__ import annotations

from apps.instances import commands
from apps.instances.choices import POWER_KINDS
from apps.instances.models import Provider
from apps.instances.providers.placement import provider_check_usable, provider_for_model

__all__ = [
    "POWER_KINDS",
    "model_code_converge_soon",
    "provider_can_power_off",
    "provider_check_usable",
    "provider_for_model",
]


def provider_can_power_off(provider: Provider) -> bool:
    """Whether the provider's machines can be powered off and on (scale to zero by power-off)."""
    return provider.kind in POWER_KINDS


def model_code_converge_soon(*, model_code_id: int) -> None:
    """Wake the orchestrator for this model code once the current transaction commits
    (``CMD:DEPLOY``/``CMD:SCALE``/``CMD:DECOMMISSION``). The periodic reconcile converges anyway
    if the command is lost."""
    commands.converge_model_code(model_code_id=model_code_id)
