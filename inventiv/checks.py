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


@register(Tags.security, deploy=True)
def check_tunnel_gateway_urls(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """Agents behind NAT send their instance credential to every ``TUNNEL_GATEWAY_URLS`` entry
    (agent.tunnel): outside the embedded mode they must be HTTPS (the agent refuses the others
    unless their host is loopback or it was started with the cleartext opt-in)."""
    if settings.EMBEDDED:
        return []
    cleartext = [
        u for u in settings.TUNNEL_GATEWAY_URLS if not u.startswith(("https://", "wss://"))
    ]
    if not cleartext:
        return []
    return [
        Warning(
            f"INVENTIV_TUNNEL_GATEWAY_URLS lists {', '.join(map(repr, cleartext))}: agents "
            "would send their credentials in cleartext (they refuse such a URL unless its host "
            "is loopback or INVENTIV_AGENT_ALLOW_CLEARTEXT_TUNNEL=1).",
            hint="Serve the gateway over HTTPS and list https:// URLs.",
            id="inventiv.W005",
        )
    ]


def _server_connection_limit() -> int | None:
    """The connections PostgreSQL gives ordinary roles: ``max_connections`` less the reserved
    slots (``superuser_reserved_connections``, and ``reserved_connections`` from 16 on).
    None when the server cannot be asked (the check is then skipped)."""
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                " - coalesce(current_setting('reserved_connections', true), '0')::int"
            )
            row = cursor.fetchone()
    except (DatabaseError, RuntimeError):  # unreachable, or database access refused (tests)
        return None
    finally:
        connection.close()  # back to the pool: a check holds nothing
    return int(row[0]) if row else None


def pool_plan_total(plan: dict[str, tuple[int, int]]) -> int:
    """The connections the deployment may open at most: Σ processes × pool size."""
    return sum(count * size for count, size in plan.values())


@register(Tags.database, deploy=True)
def check_connection_budget(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """Every process's pool is bounded, so the deployment opens at most the sum of its pools
    (``DATABASE_POOL_PLAN``); warn when that sum exceeds what the server accepts, since then
    a busy moment ends in "too many clients" errors rather than in waiting for the pool."""
    if not settings.DATABASE_URL:
        return []
    if not settings.DATABASE_POOL_MAX_SIZE:
        return [
            Warning(
                "DATABASE_POOL_MAX_SIZE=0: no connection pool, so each thread may keep a "
                "connection of its own and the number of connections is not bounded.",
                hint="Leave DATABASE_POOL_MAX_SIZE at its default (8) or size it per role; "
                "see docs/operations.md.",
                id="inventiv.W004",
            )
        ]
    limit = _server_connection_limit()
    total = pool_plan_total(settings.DATABASE_POOL_PLAN)
    if limit is None or total <= limit:
        return []
    roles = ", ".join(
        f"{role} {count}×{size}" for role, (count, size) in settings.DATABASE_POOL_PLAN.items()
    )
    return [
        Warning(
            f"The connection pools may open {total} connections ({roles}), more than the "
            f"{limit} PostgreSQL accepts (max_connections less its reserved slots).",
            hint="Lower DATABASE_POOL_MAX_SIZE (or a role's size in DATABASE_POOL_PLAN), run "
            "fewer processes, or raise max_connections; see docs/operations.md.",
            id="inventiv.W003",
        )
    ]
