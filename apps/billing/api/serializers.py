from rest_framework import serializers

from apps.billing.models import Price, UsageRecord, UsageRollup
from inventiv.params import IdField


class UsageFilterSerializer(serializers.Serializer):
    model_code = serializers.SlugField(required=False)
    api_key = IdField(required=False)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class UsageRecordOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = UsageRecord
        fields = [
            "request_id", "organization", "api_key_id", "model_code", "model_code_id",
            "instance_id", "endpoint", "stream", "prompt_tokens", "completion_tokens",
            "total_tokens", "status_code", "error_code", "attempts", "latency_ms", "ttft_ms",
            "started_at",
        ]  # fmt: skip


class UsageSummaryOutSerializer(serializers.Serializer):
    model_code = serializers.CharField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class PriceInSerializer(serializers.Serializer):
    model_code = IdField()
    currency = serializers.CharField(max_length=3)
    input_per_million = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)
    output_per_million = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)
    valid_from = serializers.DateTimeField(required=False)


class PriceOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = Price
        fields = [
            "id", "model_code_id", "currency", "input_per_million", "output_per_million",
            "valid_from", "created_at",
        ]  # fmt: skip


class PriceFilterSerializer(serializers.Serializer):
    model_code = IdField(required=False)


class RollupOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = UsageRollup
        fields = [
            "organization", "api_key_id", "model_code_id", "model_code", "hour", "currency",
            "requests", "prompt_tokens", "completion_tokens", "spend", "unpriced_requests",
        ]  # fmt: skip


class BudgetInSerializer(serializers.Serializer):
    organization = serializers.SlugField(required=False, help_text="Default: yours.")
    api_key = IdField(required=False, help_text="A key of the organization; none: all of it.")
    currency = serializers.CharField(max_length=3)
    monthly_limit = serializers.DecimalField(max_digits=14, decimal_places=6, min_value=0)
    warn_at_percent = serializers.IntegerField(min_value=1, max_value=100, default=80)


class BudgetOutSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="budget.id")
    organization = serializers.CharField(source="budget.organization.slug")
    api_key_id = serializers.IntegerField(source="budget.api_key_id", allow_null=True)
    currency = serializers.CharField(source="budget.currency")
    monthly_limit = serializers.DecimalField(
        source="budget.monthly_limit", max_digits=14, decimal_places=6
    )
    warn_at_percent = serializers.IntegerField(source="budget.warn_at_percent")
    month_to_date_spend = serializers.DecimalField(source="spend", max_digits=18, decimal_places=9)
    blocked = serializers.BooleanField()
    alerts = serializers.ListField(child=serializers.IntegerField(), help_text="Percents crossed.")


class CostFilterSerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="Default: the month's start.")
    until = serializers.DateTimeField(required=False, help_text="Default: now.")


class InstanceCostOutSerializer(serializers.Serializer):
    instance_id = serializers.CharField()
    organization_id = serializers.IntegerField()
    model_code_id = serializers.IntegerField()
    model_code = serializers.CharField()
    currency = serializers.CharField()
    hourly_price = serializers.DecimalField(max_digits=10, decimal_places=4)
    minutes = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=18, decimal_places=6)


class MarginOutSerializer(serializers.Serializer):
    model_code_id = serializers.IntegerField()
    model_code = serializers.CharField()
    organization_id = serializers.IntegerField()
    currency = serializers.CharField()
    machine_minutes = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=18, decimal_places=6)
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    revenue = serializers.DecimalField(max_digits=18, decimal_places=6)
    cost_per_million_tokens = serializers.DecimalField(
        max_digits=18, decimal_places=6, allow_null=True
    )
    margin = serializers.DecimalField(max_digits=18, decimal_places=6)


class CostsOutSerializer(serializers.Serializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    instances = InstanceCostOutSerializer(many=True)
    model_codes = MarginOutSerializer(many=True)
    month_to_date_cost = serializers.DecimalField(max_digits=18, decimal_places=6)
    hourly_burn = serializers.DecimalField(max_digits=18, decimal_places=6)
    forecast = serializers.DecimalField(max_digits=18, decimal_places=6)
