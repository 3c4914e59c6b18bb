from typing import Any

from rest_framework import serializers

from apps.accounts.models import Organization
from apps.gateway.models import ApiKey
from inventiv.params import MAX_POSITIVE_INT, IdField


class ApiKeyInSerializer(serializers.Serializer[Any]):
    organization = serializers.SlugField(required=False, help_text="Default: your personal one.")
    name = serializers.CharField(max_length=100)
    model_codes = serializers.ListField(
        child=IdField(),
        required=False,
        default=list,
        help_text="Model code ids this key may use; empty: all of the organization's.",
    )
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="In the future (400 invalid_value otherwise); null: never expires.",
    )
    rpm_limit = serializers.IntegerField(
        min_value=1, max_value=MAX_POSITIVE_INT, required=False, allow_null=True
    )
    tpm_limit = serializers.IntegerField(
        min_value=1, max_value=MAX_POSITIVE_INT, required=False, allow_null=True
    )
    concurrency_limit = serializers.IntegerField(
        min_value=1, max_value=MAX_POSITIVE_INT, required=False, allow_null=True
    )


class ApiKeyOutSerializer(serializers.ModelSerializer[ApiKey]):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    model_codes = serializers.SerializerMethodField()
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id", "organization", "name", "prefix", "model_codes", "expires_at", "revoked",
            "revoked_at", "rpm_limit", "tpm_limit", "concurrency_limit", "rotated_from",
            "created_at",
        ]  # fmt: skip

    def get_model_codes(self, key: ApiKey) -> list[str]:
        # Prefetched by the selector: no query per key.
        return sorted(m.name for m in key.model_codes.all())

    def get_revoked(self, key: ApiKey) -> bool:
        return key.revoked_at is not None


class ApiKeyCreatedOutSerializer(ApiKeyOutSerializer):
    key = serializers.SerializerMethodField(help_text="The key itself, shown this once only.")

    class Meta(ApiKeyOutSerializer.Meta):
        fields = [*ApiKeyOutSerializer.Meta.fields, "key"]

    def get_key(self, key: ApiKey) -> str:
        return str(self.context["plaintext"])
