"""Usage: one record per gateway request, written in batches by the worker."""

from __future__ import annotations

from django.db import models

from apps.accounts.models import Organization
from apps.gateway.usage_record import FINAL_SEQ


class UsageRecord(models.Model):
    """What one request through the gateway consumed. Idempotent by ``request_id``: the flush
    task may write a batch twice (after a crash) without double counting. ``seq`` orders a
    request's versions: a stream's checkpoints (1, 2, ...; what was delivered so far) are
    superseded by its final record (``FINAL_SEQ``), never the reverse; a record whose ``seq``
    is below ``FINAL_SEQ`` is a stream whose gateway died (``gateway_interrupted``).

    Foreign keys are plain ids without database constraints: records are written in bulk from a
    buffer and must never fail because a key or model code was deleted meanwhile.
    """

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    api_key_id = models.BigIntegerField(null=True, blank=True)
    model_code_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    model_code = models.CharField(max_length=64)
    instance_id = models.UUIDField(null=True, blank=True)
    endpoint = models.CharField(max_length=32)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    # HTTP status returned to the client (499 when the client went away mid-stream).
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    latency_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField(db_index=True)
    seq = models.PositiveIntegerField(default=FINAL_SEQ)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "started_at"], name="usage_org_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_code} {self.total_tokens}"


class Price(models.Model):
    """What a model code costs per million tokens from ``valid_from`` on (history: a new price
    is a new row; a request is billed at the row in force at its ``started_at``)."""

    model_code = models.ForeignKey(
        "llm_models.LlmModel", on_delete=models.CASCADE, related_name="+"
    )
    currency = models.CharField(max_length=3)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    valid_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_code_id", "-valid_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_code", "valid_from"], name="price_model_code_valid_from_uniq"
            ),
            models.CheckConstraint(
                condition=models.Q(input_per_million__gte=0, output_per_million__gte=0),
                name="price_not_negative",
            ),
        ]

    def __str__(self) -> str:
        prices = f"{self.input_per_million}/{self.output_per_million}"
        return f"{self.model_code_id} {prices} {self.currency}"


class UsageRollup(models.Model):
    """Usage per organization, key, model code and hour, recomputed from ``UsageRecord`` (so a
    replayed or duplicated record changes nothing). ``spend`` is at the prices in force when
    each request was served; ``unpriced_requests`` counts those served with no price."""

    organization = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    # 0: no key / no model code (the usage record's null), so that the bucket is a plain key.
    api_key_id = models.BigIntegerField(default=0)
    model_code_id = models.BigIntegerField(default=0)
    model_code = models.CharField(max_length=64)
    hour = models.DateTimeField()
    currency = models.CharField(max_length=3, blank=True)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    spend = models.DecimalField(max_digits=18, decimal_places=9, default=0)
    unpriced_requests = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-hour", "organization_id", "model_code"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "api_key_id", "model_code_id", "model_code", "hour"],
                name="rollup_bucket_uniq",
            ),
        ]
        indexes = [models.Index(fields=["organization", "hour"], name="rollup_org_hour_idx")]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.model_code} {self.hour:%Y-%m-%d %H}h {self.spend}"


class Budget(models.Model):
    """A monthly spending limit (calendar month, UTC) for an organization or one of its keys
    (``api_key_id`` set). Enforced by the gateways' reservations in Redis and by the billing
    task's block; warnings at ``warn_at_percent`` and 100 %."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        "gateway.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    currency = models.CharField(max_length=3)
    monthly_limit = models.DecimalField(max_digits=14, decimal_places=6)
    warn_at_percent = models.PositiveSmallIntegerField(default=80)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization_id", "api_key_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"],
                condition=models.Q(api_key__isnull=True),
                name="budget_one_per_organization",
            ),
            models.UniqueConstraint(fields=["api_key"], name="budget_one_per_key"),
            models.CheckConstraint(
                condition=models.Q(monthly_limit__gte=0), name="budget_not_negative"
            ),
        ]

    def __str__(self) -> str:
        scope = f"key {self.api_key_id}" if self.api_key_id else "organization"
        return f"{self.organization_id} {scope}: {self.monthly_limit} {self.currency}/month"


class BudgetAlert(models.Model):
    """A threshold a budget crossed in a month (one row per budget, month and threshold)."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    month = models.DateField()
    percent = models.PositiveSmallIntegerField()
    spend = models.DecimalField(max_digits=18, decimal_places=9)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "month", "percent"], name="budget_alert_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"budget {self.budget_id} {self.month:%Y-%m} {self.percent}%"
