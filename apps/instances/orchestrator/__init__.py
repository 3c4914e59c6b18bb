"""The orchestrator: provisioning and termination steps (run by per-instance tasks), power
actions, and the reconciler that converges desired state (the database) with reality
(providers, heartbeats). Called by ``apps.instances.tasks``; calls the services.

Guarantees:
* Every step is safe to run twice: it checks the state first, records external ids as soon as
  it has them, and creates machines through adapters that look for our tag before creating.
* Replica counting and creation for a model code happen under a row lock on the model code, so
  two reconcilers (or a command delivered twice) never create a duplicate instance.
* The reconciler takes a non-blocking lease; a second one skips instead of waiting.
"""

from apps.instances.orchestrator.power import instance_power_apply
from apps.instances.orchestrator.provisioning import (
    TransientProvisioningError,
    instance_provision,
    instance_terminate,
    local_fleet_reattach,
    local_fleet_shutdown,
)
from apps.instances.orchestrator.reconcile import (
    MAX_PROVISION_COMMANDS,
    RECONCILE_LOCK,
    _release_lease,
    _resend_lost_commands,
    _take_lease,
    cluster_status,
    reconcile,
)
from apps.instances.orchestrator.scaling import (
    ConvergeResult,
    model_code_converge,
    model_code_finish_decommission,
)

__all__ = [
    "MAX_PROVISION_COMMANDS",
    "RECONCILE_LOCK",
    "ConvergeResult",
    "TransientProvisioningError",
    "_release_lease",
    "_resend_lost_commands",
    "_take_lease",
    "cluster_status",
    "instance_power_apply",
    "instance_provision",
    "instance_terminate",
    "local_fleet_reattach",
    "local_fleet_shutdown",
    "model_code_converge",
    "model_code_finish_decommission",
    "reconcile",
]
