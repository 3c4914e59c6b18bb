"""The models of ``apps.instances``, by subdomain: machine supply (``supply``), the instance
lifecycle (``instance``) and on-premise hosts (``onprem``)."""

from apps.instances.models.instance import (
    Instance,
    InstanceEvent,
    OrchestratorLock,
    ProvisionAttempt,
)
from apps.instances.models.onprem import OnPremAssignment, OnPremHost
from apps.instances.models.supply import InstanceType, Provider, SweepRecord

__all__ = [
    "Instance",
    "InstanceEvent",
    "InstanceType",
    "OnPremAssignment",
    "OnPremHost",
    "OrchestratorLock",
    "Provider",
    "ProvisionAttempt",
    "SweepRecord",
]
