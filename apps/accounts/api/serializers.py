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
