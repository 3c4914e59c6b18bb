"""Sign-in events in the audit trail: every login (portal, admin) and every refused one."""

from __future__ import annotations

from typing import Any

from allauth.account.signals import user_logged_in as allauth_logged_in
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from apps.accounts.audit import audit_record
from apps.accounts.auth import SSO_SESSION_KEY
from apps.accounts.models import User
from apps.accounts.throttling import client_ip


def _where(request: Any) -> dict[str, Any]:
    if request is None:
        return {}
    return {
        "ip": client_ip(request),
        "user_agent": str(request.META.get("HTTP_USER_AGENT", ""))[:300],
    }


@receiver(user_logged_in, dispatch_uid="inventiv_audit_login")
def _logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if isinstance(user, User):
        audit_record(action="auth.login", actor=user, target=user, **_where(request))


@receiver(user_logged_out, dispatch_uid="inventiv_audit_logout")
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if isinstance(user, User):
        audit_record(action="auth.logout", actor=user, target=user, **_where(request))


@receiver(user_login_failed, dispatch_uid="inventiv_audit_login_failed")
def _login_failed(sender: Any, credentials: Any, request: Any = None, **kwargs: Any) -> None:
    # The attempted name only (never the password: Django already masks it in ``credentials``).
    name = str((credentials or {}).get("username") or (credentials or {}).get("email") or "")
    audit_record(
        action="auth.login_failed", target_type="user", target_label=name[:200], **_where(request)
    )


@receiver(allauth_logged_in, dispatch_uid="inventiv_audit_sso_login")
def _sso_logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    sociallogin = kwargs.get("sociallogin")
    if request is not None and hasattr(request, "session"):
        request.session[SSO_SESSION_KEY] = sociallogin is not None
    if sociallogin is not None and isinstance(user, User):
        audit_record(
            action="auth.sso_login",
            actor=user,
            target=user,
            data={"provider": sociallogin.account.provider},
            **_where(request),
        )
