from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from apps.accounts.models import Organization
from apps.models.choices import (
    QUANTIZATION_CHOICES,
    Dtype,
    Engine,
    ModelStatus,
    RoutingPolicy,
    ScaleToZeroMode,
)


class LlmModel(models.Model):
    """A *model code*: a public name (``sales-bot``) mapped to an engine model id and needs."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="model_codes"
    )
    name = models.SlugField(max_length=64)
    engine = models.CharField(max_length=16, choices=Engine.choices, default=Engine.VLLM)
    model_id = models.CharField(max_length=255)
    engine_args = models.JSONField(default=dict, blank=True)
    # Hardware needs: explicit, or estimated from parameter count, dtype and context length.
    gpu_count = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(0), MaxValueValidator(16)]
    )
    vram_per_gpu_gb = models.PositiveIntegerField(null=True, blank=True)
    parameter_count_b = models.DecimalField(
        max_digits=8, decimal_places=2, null=True, blank=True, help_text="Billions."
    )
    dtype = models.CharField(max_length=16, choices=Dtype.choices, default=Dtype.AUTO)
    # Weight quantization, separate from the precision above ("" = none or the checkpoint's).
    quantization = models.CharField(
        max_length=32, choices=QUANTIZATION_CHOICES, default="", blank=True
    )
    max_model_len = models.PositiveIntegerField(null=True, blank=True)
    desired_replicas = models.PositiveSmallIntegerField(default=1)
    # The scaling policy (docs/autoscaling.md). A manual replica count is min = max = replicas;
    # the autoscaler moves ``desired_replicas`` within [min, max] only when they differ.
    min_replicas = models.PositiveSmallIntegerField(default=1)
    max_replicas = models.PositiveSmallIntegerField(default=1)
    # Waiting + running requests one replica should carry (engines' and gateways' counts).
    target_load_per_replica = models.PositiveIntegerField(default=8)
    # Optional: scale up when the engines' mean KV-cache use (0..1) passes it.
    target_kv_cache_usage = models.FloatField(null=True, blank=True)
    scale_up_cooldown_s = models.PositiveIntegerField(default=60)
    scale_down_cooldown_s = models.PositiveIntegerField(default=300)
    # With min_replicas 0: no request for this long, and the replicas go to zero.
    idle_to_zero_s = models.PositiveIntegerField(default=900)
    # [{"days": [0..6 (Monday 0)], "start": "08:00", "end": "19:00", "min_replicas": 2}, ...]
    scale_schedules = models.JSONField(default=list, blank=True)
    scale_timezone = models.CharField(max_length=64, default="UTC")
    # How long the gateway holds a request while a replica wakes from zero (cold starts).
    hold_timeout_s = models.PositiveIntegerField(default=600)
    # Optional latency bound: scale up while the gateways' time to first token p95 over the
    # last ``latency_window_s`` passes it.
    ttft_p95_bound_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_window_s = models.PositiveIntegerField(default=60)
    # How long a draining instance may serve its last streams before it is stopped anyway
    # (null: the platform's INVENTIV_DRAIN_DEADLINE_S).
    drain_timeout_s = models.PositiveIntegerField(null=True, blank=True)
    # Scaling to zero terminates the last machine, or powers it off (disk kept, next wake
    # without creation nor model download) where the provider can.
    scale_to_zero_mode = models.CharField(
        max_length=16, choices=ScaleToZeroMode.choices, default=ScaleToZeroMode.TERMINATE
    )
    routing_policy = models.CharField(
        max_length=32, choices=RoutingPolicy.choices, default=RoutingPolicy.LEAST_OUTSTANDING
    )
    # Placement: an explicit provider / instance type / zone, or automatic when empty.
    provider = models.ForeignKey(
        "instances.Provider", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    instance_type = models.ForeignKey(
        "instances.InstanceType", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    zone = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=20, choices=ModelStatus.choices, default=ModelStatus.DRAFT)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"],
                condition=~models.Q(status=ModelStatus.DECOMMISSIONED),
                name="llmmodel_name_unique_live",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=ModelStatus.values), name="llmmodel_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(engine__in=Engine.values), name="llmmodel_engine_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(min_replicas__lte=models.F("max_replicas")),
                name="llmmodel_min_le_max_replicas",
            ),
            models.CheckConstraint(
                condition=models.Q(scale_to_zero_mode__in=ScaleToZeroMode.values),
                name="llmmodel_scale_to_zero_mode_valid",
            ),
        ]
        indexes = [models.Index(fields=["status"], name="llmmodel_status_idx")]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.name}"


class ModelCodeEvent(models.Model):
    """Append-only history of a model code's status: who, from, to, why."""

    model_code = models.ForeignKey(LlmModel, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20)
    reason = models.CharField(max_length=500)
    # Who: a user's e-mail, or "orchestrator" for the platform's own decisions.
    actor = models.CharField(max_length=254)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["model_code", "created_at"], name="modelcodeevent_model_idx")
        ]

    def __str__(self) -> str:
        return f"{self.model_code_id}: {self.from_status or '-'} -> {self.to_status}"


class ScalingQuota(models.Model):
    """An organization's ceiling that scaling never exceeds (empty: no ceiling)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="scaling_quota"
    )
    max_gpus = models.PositiveIntegerField(null=True, blank=True)
    max_instances = models.PositiveIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"quota of {self.organization_id}"


class ScalingDecision(models.Model):
    """Append-only: one autoscaler decision, with what it saw, before/after and why."""

    model_code = models.ForeignKey(
        LlmModel, on_delete=models.CASCADE, related_name="scaling_decisions"
    )
    trigger = models.CharField(max_length=16)  # periodic, wake (an event: a request at zero)
    replicas_before = models.PositiveSmallIntegerField()
    replicas_after = models.PositiveSmallIntegerField()
    reason = models.CharField(max_length=500)
    inputs = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["model_code", "-created_at"], name="scalingdecision_model_idx")
        ]

    def __str__(self) -> str:
        return f"{self.model_code_id}: {self.replicas_before} -> {self.replicas_after}"


class HubToken(models.Model):
    """An organization's Hugging Face token, for gated and private models: encrypted at rest
    (inventiv/crypto.py), written through ``hub_token_set`` and never shown again (the REST API
    and the admin are write-only). It reaches engines only through the agent's authenticated
    desired state and the engine's environment (``HF_TOKEN``)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="hub_token"
    )
    token_encrypted = models.TextField()
    # The last four characters, so that an operator can tell which token is set.
    hint = models.CharField(max_length=8, blank=True)
    updated_by = models.CharField(max_length=254, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Hugging Face token of {self.organization_id}"
