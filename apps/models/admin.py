from django.contrib import admin

from apps.models.models import LlmModel


@admin.register(LlmModel)
class LlmModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Model codes. Deploy, scale and decommission through the REST API or the portal: they go
    through the services that wake the orchestrator."""

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
