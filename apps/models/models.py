from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from apps.accounts.models import Organization
from apps.models.choices import Dtype, Engine, ModelStatus, RoutingPolicy


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
    max_model_len = models.PositiveIntegerField(null=True, blank=True)
    desired_replicas = models.PositiveSmallIntegerField(default=1)
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
