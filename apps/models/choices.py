from django.db import models

from agent.engine_args import TGI_QUANTIZATIONS, VLLM_QUANTIZATIONS


class Engine(models.TextChoices):
    VLLM = "vllm", "vLLM"  # the production engine, on GPU machines
    TGI = "tgi", "TGI"  # text-generation-inference, on GPU machines (docs/engines.md)
    MOCK = "mock", "Mock"  # built into the agent: speaks vLLM's API, for development and tests


class ModelStatus(models.TextChoices):
    DRAFT = "draft", "Draft"  # defined, never deployed
    DEPLOYING = "deploying", "Deploying"  # replicas wanted, none ready yet
    ACTIVE = "active", "Active"  # at least one ready replica, or deployed and scaled to zero
    DECOMMISSIONING = "decommissioning", "Decommissioning"  # terminating every instance
    DECOMMISSIONED = "decommissioned", "Decommissioned"  # nothing left running; history kept


# Model codes whose replicas the orchestrator keeps at ``desired_replicas``.
DEPLOYED_STATUSES = frozenset({ModelStatus.DEPLOYING, ModelStatus.ACTIVE})

_M = ModelStatus
# The allowed transitions; ``apps.models.services.model_transition`` is the only writer.
MODEL_TRANSITIONS: dict[ModelStatus, frozenset[ModelStatus]] = {
    _M.DRAFT: frozenset({_M.DEPLOYING, _M.DECOMMISSIONING}),
    _M.DEPLOYING: frozenset({_M.ACTIVE, _M.DECOMMISSIONING}),
    _M.ACTIVE: frozenset({_M.DECOMMISSIONING}),
    _M.DECOMMISSIONING: frozenset({_M.DECOMMISSIONED}),
    _M.DECOMMISSIONED: frozenset(),
}


def model_can_transition(current: str, to: str) -> bool:
    return ModelStatus(to) in MODEL_TRANSITIONS[ModelStatus(current)]


class ScaleToZeroMode(models.TextChoices):
    """What scaling to zero does with the last machine (docs/autoscaling.md)."""

    TERMINATE = "terminate", "Terminate"  # release everything; the next wake creates a machine
    POWER_OFF = "power_off", "Power off"  # stop it, disk kept; the next wake powers it on


class RoutingPolicy(models.TextChoices):
    LEAST_OUTSTANDING = "least_outstanding", "Least outstanding requests"
    SESSION_AFFINITY = "session_affinity", "Session affinity (by header)"
    PREFIX_AWARE = "prefix_aware", "Prefix-aware (consistent hashing, bounded load)"


class Dtype(models.TextChoices):
    """Precision of weights and activations: the engine's ``--dtype`` (agent.engine_args.DTYPES).
    Weight quantization is the separate ``quantization`` setting."""

    AUTO = "auto", "auto"  # the checkpoint's own (16-bit as saved)
    FLOAT16 = "float16", "float16"
    BFLOAT16 = "bfloat16", "bfloat16"
    FLOAT32 = "float32", "float32"


# Weight quantization: "" (none, or what the checkpoint declares) or a method of vLLM's
# ``--quantization`` or TGI's ``--quantize``; which engine takes which is checked by
# ``agent.engine_args.validate_precision``.
QUANTIZATION_CHOICES: list[tuple[str, str]] = [("", "none (or the checkpoint's own)")] + [
    (method, method) for method in sorted({*VLLM_QUANTIZATIONS, *TGI_QUANTIZATIONS})
]
