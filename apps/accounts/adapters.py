from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter

from apps.accounts.services import organization_ensure_personal


class AccountAdapter(DefaultAccountAdapter):
    """Gives every user who signs up on the portal a personal organization."""

    def save_user(self, request: Any, user: Any, form: Any, commit: bool = True) -> Any:
        user = super().save_user(request, user, form, commit=commit)
        if commit:
            organization_ensure_personal(user=user)
        return user
