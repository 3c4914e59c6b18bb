from rest_framework import serializers

from apps.accounts.models import Organization
from apps.instances.models import InstanceType, Provider
from apps.models.choices import Dtype, Engine, RoutingPolicy
from apps.models.models import LlmModel
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
            "max_model_len",
            "desired_replicas",
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
