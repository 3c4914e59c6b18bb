"""Deployment checks (``manage.py check --deploy``) for the orchestrator's settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def check_agent_api_url(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """Machines send their bootstrap token and credential to ``AGENT_API_URL``: outside the
    embedded mode it must be HTTPS."""
    if settings.EMBEDDED or settings.AGENT_API_URL.startswith("https://"):
        return []
    return [
        Warning(
            f"INVENTIV_AGENT_API_URL/INVENTIV_PUBLIC_URL is {settings.AGENT_API_URL!r}: agents "
            "would send their bootstrap tokens and credentials in cleartext.",
            hint="Serve the internal agent API over HTTPS and point the URL at it.",
            id="inventiv.W001",
        )
    ]
