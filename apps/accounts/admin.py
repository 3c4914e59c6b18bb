from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.utils import timezone

from apps.accounts.models import (
    AuditEntry,
    Invitation,
    Membership,
    Organization,
    PersonalAccessToken,
    User,
)
from apps.accounts.services import (
    INVITATION_TTL,
    access_token_revoke,
    invitation_create,
    invitation_link,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = (
        (None, {"fields": ("email", "password", "name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "personal", "personal_user", "created_at"]
    search_fields = ["slug", "name"]
    autocomplete_fields = ["personal_user"]
    inlines = [MembershipInline]


@admin.register(PersonalAccessToken)
class PersonalAccessTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Tokens are created by their owners (shown once); operators can see and revoke them."""

    list_display = ["user", "name", "lookup_id", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["user__email", "name", "lookup_id"]
    readonly_fields = ["user", "name", "lookup_id", "created_at", "last_used_at", "expires_at"]
    exclude = ["secret_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    @admin.action(description="Revoke")
    def revoke(self, request: Any, queryset: Any) -> None:
        for token in queryset:
            access_token_revoke(token=token)


class InvitationForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Invitation
        fields = ["email", "expires_at"]

    def clean_expires_at(self) -> Any:
        expires_at = self.cleaned_data["expires_at"]
        if expires_at <= timezone.now():
            raise forms.ValidationError("Must be in the future.")
        return expires_at


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Staff invite people to sign up (``INVENTIV_SIGNUP=invite``): give an address (or none)
    and an expiry; the one-time link is shown once, after saving."""

    form = InvitationForm
    list_display = [
        "lookup_id",
        "email",
        "organization",
        "role",
        "created_by",
        "created_at",
        "expires_at",
        "used_at",
        "revoked_at",
    ]
    search_fields = ["email", "lookup_id", "organization__slug"]
    readonly_fields = [
        "lookup_id",
        "organization",
        "role",
        "created_by",
        "used_at",
        "used_by",
        "revoked_at",
    ]

    def get_fields(self, request: Any, obj: Any = None) -> Any:
        shown = ["email", "expires_at"]
        return shown if obj is None else [*shown, *self.readonly_fields]

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False  # an invitation is created, then only used or left to expire

    def get_changeform_initial_data(self, request: Any) -> dict[str, Any]:
        return {"expires_at": timezone.now() + INVITATION_TTL}

    def save_model(self, request: Any, obj: Any, form: Any, change: bool) -> None:
        invitation, token = invitation_create(
            created_by=request.user, email=obj.email, expires_at=obj.expires_at
        )
        obj.pk = invitation.pk
        obj.lookup_id = invitation.lookup_id
        messages.warning(
            request, f"Invitation link (shown once, valid once): {invitation_link(token=token)}"
        )


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The audit trail, for operators: read-only (append-only in the database too)."""

    list_display = [
        "created_at",
        "organization_slug",
        "actor_email",
        "action",
        "target_label",
        "ip",
    ]
    list_filter = ["action"]
    search_fields = ["organization_slug", "actor_email", "action", "target_label", "ip"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        return [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
