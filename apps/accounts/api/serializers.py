from typing import Any

from rest_framework import serializers

from apps.accounts.choices import Role


class OrganizationOutSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    personal = serializers.BooleanField()
    role = serializers.ChoiceField(choices=Role.choices)


class MeOutSerializer(serializers.Serializer):
    email = serializers.EmailField()
    name = serializers.CharField()
    is_staff = serializers.BooleanField()
    organizations = OrganizationOutSerializer(many=True)


class AccessTokenInSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="In the future (400 invalid_value otherwise); null: never expires.",
    )


class AccessTokenOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.SerializerMethodField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    sso = serializers.BooleanField(
        help_text="Created by single sign-on: reaches organizations that require it."
    )

    def get_prefix(self, obj: Any) -> str:
        return f"ivp_{obj.lookup_id}_..."


class AccessTokenCreatedOutSerializer(AccessTokenOutSerializer):
    token = serializers.CharField(help_text="Shown once: store it now.")
