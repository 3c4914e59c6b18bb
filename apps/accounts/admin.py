from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from apps.accounts.models import Membership, Organization, PersonalAccessToken, User
from apps.accounts.services import access_token_revoke


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
