"""Admin for operators: providers (credentials write-only), catalog, on-premise hosts (with a
join command shown once), sweep records. Writes go through services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.instances.agents.hosts import onprem_host_issue_join
from apps.instances.models import (
    Instance,
    InstanceEvent,
    InstanceType,
    OnPremAssignment,
    OnPremHost,
    Provider,
    ProvisionAttempt,
    SweepRecord,
)
from apps.instances.providers.base import PowerAction, ProviderError
from apps.instances.providers.credentials import credentials_for, provider_set_credentials
from apps.instances.providers.tasks import catalog_sync_task, sweep_provider_task
from apps.instances.services import instance_drain, instance_power, instance_request_termination
from inventiv.errors import ApplicationError


class ProviderForm(forms.ModelForm):  # type: ignore[type-arg]
    credentials = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=(
            'Write-only. Scaleway: {"access_key": "SCW...", "secret_key": "..."}; AWS: '
            '{"access_key_id": "...", "secret_access_key": "..."} or empty for the worker '
            "role. Leave empty to keep the stored credentials."
        ),
    )

    class Meta:
        model = Provider
        fields = ["name", "kind", "enabled", "config"]


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = ProviderForm
    list_display = ["name", "kind", "enabled", "has_credentials", "created_at"]
    actions = ["sync_catalog", "sweep_now"]

    @admin.display(boolean=True, description="credentials")
    def has_credentials(self, obj: Provider) -> bool:
        return bool(obj.credentials_encrypted)

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        new = form.cleaned_data.get("credentials")
        if new:
            provider_set_credentials(provider=obj, credentials={**credentials_for(obj), **new})

    @admin.action(description="Sync the catalog now")
    def sync_catalog(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            catalog_sync_task.delay(provider_id=provider.id)
        messages.info(request, f"Catalog sync sent for {queryset.count()} provider(s).")

    @admin.action(description="Sweep orphaned resources now")
    def sweep_now(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            sweep_provider_task.delay(provider_id=provider.id)
        messages.info(request, f"Sweep sent for {queryset.count()} provider(s).")


@admin.register(InstanceType)
class InstanceTypeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "code",
        "provider",
        "gpu_model",
        "gpu_count",
        "vram_per_gpu_gb",
        "hourly_price",
        "currency",
        "active",
        "synced_at",
    ]
    list_filter = ["provider", "active", "gpu_model"]
    search_fields = ["code", "gpu_model"]


@admin.register(OnPremHost)
class OnPremHostAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "name",
        "provider",
        "enabled",
        "gpu_model",
        "gpu_count",
        "reachability",
        "dialable",
        "joined_at",
        "last_seen_at",
    ]
    list_filter = ["provider", "reachability", "dialable"]
    readonly_fields = [
        "join_token_hash",
        "join_expires_at",
        "joined_at",
        "credential_hash",
        "hostname",
        "advertise_host",
        "gpus",
        "gpu_model",
        "vram_per_gpu_gb",
        "last_seen_at",
        "dialable",  # the dial-back probe's answer at join; reachability (auto) follows it
        "probed_at",
    ]
    actions = ["issue_join_command"]

    @admin.action(description="Issue a one-time join command (revokes the current one)")
    def issue_join_command(self, request: HttpRequest, queryset: QuerySet[OnPremHost]) -> None:
        for host in queryset:
            join = onprem_host_issue_join(provider=host.provider, name=host.name)
            messages.warning(
                request, f"{host.name} (shown once, valid until {join.expires_at}): {join.command}"
            )


@admin.register(OnPremAssignment)
class OnPremAssignmentAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "id",
        "host",
        "instance",
        "gpu_indices",
        "engine_port",
        "desired",
        "state",
        "created_at",
        "stopped_at",
    ]
    list_filter = ["state", "desired"]
    exclude = ["bootstrap_token_encrypted"]


@admin.register(SweepRecord)
class SweepRecordAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "created_at",
        "provider",
        "resource_kind",
        "resource_id",
        "instance_id",
        "action",
        "reason",
    ]
    list_filter = ["provider", "action", "resource_kind"]


class InstanceEventInline(admin.TabularInline):  # type: ignore[type-arg]
    model = InstanceEvent
    extra = 0
    can_delete = False
    fields = ("created_at", "from_status", "to_status", "reason")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ProvisionAttemptInline(admin.TabularInline):  # type: ignore[type-arg]
    model = ProvisionAttempt
    extra = 0
    can_delete = False
    fields = (
        "created_at",
        "provider",
        "instance_type_code",
        "zone",
        "outcome",
        "error_code",
        "message",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The fleet. Status is read-only here: it changes through the state machine only (use the
    actions)."""

    list_display = [
        "id",
        "llm_model",
        "organization",
        "provider",
        "status",
        "status_changed_at",
        "last_heartbeat_at",
        "agent_version",
        "failure_reason",
    ]
    list_filter = ["status", "provider", "archived"]
    search_fields = ["id", "llm_model__name", "provider_resource_id", "organization__slug"]
    list_select_related = ["llm_model", "organization", "provider"]
    inlines = [ProvisionAttemptInline, InstanceEventInline]
    actions = ["drain", "terminate", "reboot_machine"]
    exclude = [
        "engine_secret_encrypted",
        "bootstrap_token_encrypted",
        "bootstrap_token_hash",
        "credential_hash",
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Instance._meta.fields if f.name not in self.exclude]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Drain (then terminate)")
    def drain(self, request: HttpRequest, queryset: QuerySet[Instance]) -> None:
        done = 0
        for instance in queryset.select_related("llm_model"):
            try:
                done += instance_drain(instance=instance, reason=f"drained by {request.user}")
            except ApplicationError as exc:
                messages.warning(request, f"{instance.id}: {exc.message}")
        messages.info(request, f"{done} instance(s) draining or terminating.")

    @admin.action(description="Terminate now")
    def terminate(self, request: HttpRequest, queryset: QuerySet[Instance]) -> None:
        done = sum(
            instance_request_termination(instance=i, reason=f"terminated by {request.user}")
            for i in queryset.select_related("llm_model")
        )
        messages.info(request, f"{done} instance(s) terminating.")

    @admin.action(description="Reboot machine")
    def reboot_machine(self, request: HttpRequest, queryset: QuerySet[Instance]) -> None:
        sent = 0
        for instance in queryset.select_related("provider"):
            try:
                instance_power(
                    instance=instance, action=PowerAction.REBOOT, requested_by=str(request.user)
                )
            except ProviderError as exc:
                messages.warning(request, f"{instance.id}: {exc}")
            else:
                sent += 1
        messages.info(request, f"Reboot sent for {sent} instance(s); see the worker log.")
