from typing import Any

from django import forms
from django.contrib import admin

from apps.models.models import HubToken, LlmModel, ModelCodeEvent, ScalingDecision, ScalingQuota
from apps.models.services import (
    POLICY_FIELDS,
    hub_token_set,
    hub_token_validate,
    scaling_quota_set,
)
from inventiv.errors import ApplicationError


class ModelCodeEventInline(admin.TabularInline):  # type: ignore[type-arg]
    """The status history (append-only)."""

    model = ModelCodeEvent
    extra = 0
    can_delete = False
    fields = ("created_at", "from_status", "to_status", "reason", "actor")
    readonly_fields = fields

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


class ScalingDecisionInline(admin.TabularInline):  # type: ignore[type-arg]
    """The autoscaler's decisions (append-only), newest first."""

    model = ScalingDecision
    extra = 0
    can_delete = False
    max_num = 0
    fields = ("created_at", "trigger", "replicas_before", "replicas_after", "reason", "inputs")
    readonly_fields = fields
    ordering = ("-created_at",)

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(ScalingDecision)
class ScalingDecisionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["created_at", "model_code", "trigger", "replicas_before", "replicas_after"]
    list_filter = ["trigger"]
    search_fields = ["model_code__name", "reason"]
    readonly_fields = [f.name for f in ScalingDecision._meta.fields]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(ScalingQuota)
class ScalingQuotaAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """An organization's ceiling on GPUs and instances; saved through ``scaling_quota_set``."""

    list_display = ["organization", "max_gpus", "max_instances"]

    def save_model(self, request: Any, obj: ScalingQuota, form: Any, change: bool) -> None:
        saved = scaling_quota_set(
            organization=obj.organization, max_gpus=obj.max_gpus, max_instances=obj.max_instances
        )
        obj.pk = saved.pk


@admin.register(LlmModel)
class LlmModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Model codes. Deploy, scale and decommission through the REST API or the portal: they go
    through the services that wake the orchestrator."""

    inlines = [ModelCodeEventInline, ScalingDecisionInline]

    list_display = ["name", "organization", "engine", "model_id", "desired_replicas", "status"]
    list_filter = ["status", "engine"]
    search_fields = ["name", "model_id", "organization__slug"]
    readonly_fields = [
        "status",
        "status_changed_at",
        "desired_replicas",
        # The scaling policy changes through PATCH .../scaling/ (validated as a whole).
        *POLICY_FIELDS,
        "created_at",
        "updated_at",
    ]


class HubTokenForm(forms.ModelForm):  # type: ignore[type-arg]
    """Write-only: the token field is always empty; the stored token is never rendered."""

    token = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        strip=False,
        help_text="Replaces the stored token. It is never shown again.",
    )

    class Meta:
        model = HubToken
        fields = ["organization"]

    def clean_token(self) -> str:
        try:
            return hub_token_validate(self.cleaned_data.get("token"))
        except ApplicationError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(HubToken)
class HubTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """An organization's Hugging Face token (gated and private models), write-only."""

    form = HubTokenForm
    list_display = ["organization", "hint", "updated_by", "updated_at"]
    readonly_fields = ["hint", "updated_by", "updated_at"]

    def save_model(self, request: Any, obj: HubToken, form: Any, change: bool) -> None:
        saved = hub_token_set(
            organization=form.cleaned_data["organization"],
            token=form.cleaned_data["token"],
            by=getattr(request.user, "email", ""),
        )
        obj.pk = saved.pk
