from rest_framework import serializers

from apps.billing.models import UsageRecord
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
