from rest_framework import serializers

from apps.accounts.models import Organization
from apps.instances.models import InstanceType, Provider
from apps.models.choices import (
    QUANTIZATION_CHOICES,
    Dtype,
    Engine,
    RoutingPolicy,
    ScaleToZeroMode,
)
from apps.models.models import LlmModel, ScalingDecision
from apps.models.services import POLICY_FIELDS
from inventiv.params import MAX_POSITIVE_INT


class ModelCodeInSerializer(serializers.Serializer):
    organization = serializers.SlugField(required=False, help_text="Default: your personal one.")
    name = serializers.SlugField(max_length=64)
    engine = serializers.ChoiceField(choices=Engine.choices, default=Engine.VLLM)
    model_id = serializers.CharField(max_length=255)
    engine_args = serializers.DictField(required=False, default=dict)
    gpu_count = serializers.IntegerField(min_value=0, max_value=16, default=1)
    vram_per_gpu_gb = serializers.IntegerField(
        min_value=1, max_value=1024, required=False, allow_null=True
    )
    parameter_count_b = serializers.DecimalField(
        max_digits=8, decimal_places=2, required=False, allow_null=True
    )
    dtype = serializers.ChoiceField(choices=Dtype.choices, default=Dtype.AUTO)
    quantization = serializers.ChoiceField(
        choices=QUANTIZATION_CHOICES, default="", allow_blank=True
    )
    max_model_len = serializers.IntegerField(
        min_value=16, max_value=MAX_POSITIVE_INT, required=False, allow_null=True
    )
    routing_policy = serializers.ChoiceField(
        choices=RoutingPolicy.choices, default=RoutingPolicy.LEAST_OUTSTANDING
    )
    provider = serializers.SlugRelatedField(
        slug_field="name", queryset=Provider.objects.all(), required=False, allow_null=True
    )
    instance_type = serializers.PrimaryKeyRelatedField(
        queryset=InstanceType.objects.all(), required=False, allow_null=True
    )
    zone = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)


class ModelCodeUpdateSerializer(ModelCodeInSerializer):
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.fields.pop("organization")
        self.fields.pop("name")
        for field in self.fields.values():
            field.required = False
            field.default = serializers.empty


class ReplicasInSerializer(serializers.Serializer):
    replicas = serializers.IntegerField(min_value=0, max_value=64)


class DeployInSerializer(serializers.Serializer):
    replicas = serializers.IntegerField(min_value=0, max_value=64, required=False)


class ModelCodeOutSerializer(serializers.ModelSerializer):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    provider: serializers.SlugRelatedField[Provider] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True
    )

    class Meta:
        model = LlmModel
        fields = [
            "id",
            "organization",
            "name",
            "engine",
            "model_id",
            "engine_args",
            "gpu_count",
            "vram_per_gpu_gb",
            "parameter_count_b",
            "dtype",
            "quantization",
            "max_model_len",
            "desired_replicas",
            *POLICY_FIELDS,
            "routing_policy",
            "provider",
            "instance_type",
            "zone",
            "status",
            "status_changed_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ScheduleSerializer(serializers.Serializer):
    days = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=6), min_length=1, max_length=7
    )
    start = serializers.RegexField(r"^([01][0-9]|2[0-3]):[0-5][0-9]$", help_text="HH:MM")
    end = serializers.RegexField(r"^([01][0-9]|2[0-3]):[0-5][0-9]$", help_text="HH:MM")
    min_replicas = serializers.IntegerField(min_value=0, max_value=64)


class ScalingPolicyInSerializer(serializers.Serializer):
    """Only the fields given change; the whole policy is then validated."""

    min_replicas = serializers.IntegerField(min_value=0, max_value=64, required=False)
    max_replicas = serializers.IntegerField(min_value=0, max_value=64, required=False)
    target_load_per_replica = serializers.IntegerField(
        min_value=1, max_value=10_000, required=False
    )
    target_kv_cache_usage = serializers.FloatField(
        min_value=0.01, max_value=1.0, required=False, allow_null=True
    )
    scale_up_cooldown_s = serializers.IntegerField(min_value=0, max_value=86_400, required=False)
    scale_down_cooldown_s = serializers.IntegerField(min_value=0, max_value=86_400, required=False)
    idle_to_zero_s = serializers.IntegerField(min_value=0, max_value=7 * 86_400, required=False)
    scale_schedules = ScheduleSerializer(many=True, required=False)
    scale_timezone = serializers.CharField(max_length=64, required=False)
    hold_timeout_s = serializers.IntegerField(min_value=1, max_value=3_600, required=False)
    ttft_p95_bound_ms = serializers.IntegerField(
        min_value=1,
        max_value=600_000,
        required=False,
        allow_null=True,
        help_text="Scale up while the time to first token p95 passes it (null: no bound).",
    )
    latency_window_s = serializers.IntegerField(min_value=10, max_value=3_600, required=False)
    drain_timeout_s = serializers.IntegerField(
        min_value=10,
        max_value=86_400,
        required=False,
        allow_null=True,
        help_text="Longest a draining instance serves its streams (null: the platform's).",
    )
    scale_to_zero_mode = serializers.ChoiceField(choices=ScaleToZeroMode.choices, required=False)


class ScalingDecisionOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScalingDecision
        fields = [
            "id",
            "model_code",
            "trigger",
            "replicas_before",
            "replicas_after",
            "reason",
            "inputs",
            "created_at",
        ]
        read_only_fields = fields
