from typing import Any

from django.contrib import admin

from apps.models.models import LlmModel, ModelCodeEvent


class ModelCodeEventInline(admin.TabularInline):  # type: ignore[type-arg]
    """The status history (append-only)."""

    model = ModelCodeEvent
    extra = 0
    can_delete = False
    fields = ("created_at", "from_status", "to_status", "reason", "actor")
    readonly_fields = fields

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(LlmModel)
class LlmModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Model codes. Deploy, scale and decommission through the REST API or the portal: they go
    through the services that wake the orchestrator."""

    inlines = [ModelCodeEventInline]

    list_display = ["name", "organization", "engine", "model_id", "desired_replicas", "status"]
    list_filter = ["status", "engine"]
    search_fields = ["name", "model_id", "organization__slug"]
    readonly_fields = [
        "status",
        "status_changed_at",
        "desired_replicas",
        "created_at",
        "updated_at",
    ]
