"""API keys in the Django admin: operators see every key and change its rate limits in place (the
list's limit columns are editable); changes and revocations go through the services, so every
gateway picks them up within a second. Keys are created through the REST API or the portal,
where the secret is shown once."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.gateway.models import ApiKey
from apps.gateway.services import LIMIT_FIELDS, api_key_revoke, api_key_set_limits
from inventiv.errors import ApplicationError


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "name",
        "organization",
        "lookup_id",
        *LIMIT_FIELDS,
        "expires_at",
        "revoked_at",
    )
    list_editable = LIMIT_FIELDS
    list_filter = ("revoked_at",)
    search_fields = ("name", "lookup_id", "organization__slug")
    exclude = ("secret_hash",)
    actions = ("revoke",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [
            f.name
            for f in ApiKey._meta.get_fields()
            if f.concrete and f.name not in (*LIMIT_FIELDS, "secret_hash")
        ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        limits = {name: getattr(obj, name) for name in LIMIT_FIELDS}
        stored = ApiKey.objects.get(pk=obj.pk)
        try:
            api_key_set_limits(key=stored, **limits)
        except ApplicationError as exc:
            messages.error(request, f"{obj}: {exc.message}")

    @admin.action(description="Revoke")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_key_revoke(key=key)
        messages.info(request, f"{queryset.count()} key(s) revoked.")
