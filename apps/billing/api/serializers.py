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
