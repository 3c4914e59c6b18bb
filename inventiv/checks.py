"""Deployment checks (``manage.py check --deploy``) of the project's own settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def check_tls(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """``INVENTIV_TLS=off`` serves passwords, session cookies and API keys in cleartext: say so
    once (Django's four HTTPS warnings are silenced then, their advice would break the site)."""
    if settings.EMBEDDED or settings.TLS != "off":
        return []
    return [
        Warning(
            "INVENTIV_TLS=off: the platform is served over plain HTTP (no HTTPS redirect, no "
            "secure cookies, no HSTS); passwords, sessions and API keys travel in cleartext.",
            hint="Put a TLS-terminating reverse proxy in front (it must send "
            "X-Forwarded-Proto: https), then set INVENTIV_TLS=proxy and https:// URLs. "
            "See docs/operations.md.",
            id="inventiv.W002",
        )
    ]
