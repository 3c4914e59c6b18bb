from rest_framework import serializers

from apps.accounts.models import Organization
from apps.instances.agents.versions import agent_version_mismatch
from apps.instances.models import (
    Instance,
    InstanceEvent,
    InstanceType,
    Provider,
    ProvisionAttempt,
)


class InstanceEventOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = InstanceEvent
        fields = ["from_status", "to_status", "reason", "data", "created_at"]
        read_only_fields = fields


class ProvisionAttemptOutSerializer(serializers.ModelSerializer):
    provider: serializers.SlugRelatedField[Provider] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )

    class Meta:
        model = ProvisionAttempt
        fields = [
            "provider",
            "instance_type_code",
            "zone",
            "outcome",
            "error_code",
            "message",
            "created_at",
        ]
        read_only_fields = fields


class InstanceOutSerializer(serializers.ModelSerializer):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    model_code = serializers.CharField(source="llm_model.name", read_only=True)
    model_code_id = serializers.IntegerField(source="llm_model_id", read_only=True)
    provider: serializers.SlugRelatedField[Provider] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )
    instance_type: serializers.SlugRelatedField[InstanceType] = serializers.SlugRelatedField(
        slug_field="code", read_only=True, allow_null=True
    )
    agent_version_mismatch = serializers.SerializerMethodField(
        help_text="The agent reported a release other than the control plane's (a warning: it "
        "is served all the same, since it speaks the same protocol version)."
    )

    class Meta:
        model = Instance
        fields = [
            "id",
            "organization",
            "model_code",
            "model_code_id",
            "provider",
            "instance_type",
            "zone",
            "status",
            "status_reason",
            "status_changed_at",
            "failure_reason",
            "provider_resource_id",
            "public_ip",
            "agent_state",
            "agent_version",
            "agent_version_mismatch",
            "engine_status",
            "engine_metrics",
            "last_heartbeat_at",
            "ready_at",
            "terminated_at",
            "hourly_price",
            "created_at",
        ]
        read_only_fields = fields

    def get_agent_version_mismatch(self, instance: Instance) -> bool:
        return agent_version_mismatch(instance.agent_version)


class InstanceDetailOutSerializer(InstanceOutSerializer):
    events = InstanceEventOutSerializer(many=True, read_only=True)
    attempts = ProvisionAttemptOutSerializer(many=True, read_only=True)

    class Meta(InstanceOutSerializer.Meta):
        fields = [*InstanceOutSerializer.Meta.fields, "events", "attempts"]
        read_only_fields = fields
