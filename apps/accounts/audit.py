"""The audit trail: who did what, when and from where (``AuditEntry``, append-only).

``audit_record(...)`` is the one writer; any service may call it, in its own transaction (an
action rolled back leaves no entry). *Where from* and *who* come from the request being served:
``AuditContextMiddleware`` records the client address and user agent, ``request_user`` (every
API view's way to its user) records the actor; a caller may also pass them explicitly. Outside a
request (a task, a command) the actor is whoever the caller names, or none.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse

from apps.accounts.models import AuditEntry, Organization, User
from apps.accounts.throttling import client_ip


@dataclass(frozen=True, slots=True)
class AuditContext:
    ip: str | None = None
    user_agent: str = ""
    actor: User | None = None
    # How the request was signed in: True single sign-on, False a password (session or basic
    # auth), None neither (an access token, no request).
    sso: bool | None = None


_context: ContextVar[AuditContext | None] = ContextVar("inventiv_audit_context", default=None)


def audit_context() -> AuditContext:
    return _context.get() or AuditContext()


def audit_context_set_actor(actor: User, *, sso: bool | None = None) -> None:
    _context.set(replace(audit_context(), actor=actor, sso=sso))


class AuditContextMiddleware:
    """Keeps the request's address and user agent for the audit entries written while serving
    it (sync and async alike, so the ASGI web role adds no thread hop: a context variable,
    reset after the response)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def _context_of(request: HttpRequest) -> AuditContext:
        return AuditContext(
            ip=client_ip(request),
            user_agent=str(request.META.get("HTTP_USER_AGENT", ""))[:300],
        )

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        token = _context.set(self._context_of(request))
        try:
            return self.get_response(request)
        finally:
            _context.reset(token)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        token = _context.set(self._context_of(request))
        try:
            return await self.get_response(request)  # type: ignore[no-any-return]
        finally:
            _context.reset(token)


def audit_record(
    *,
    action: str,
    organization: Organization | None = None,
    organization_id: int | None = None,
    actor: User | None = None,
    target: Any = None,
    target_type: str = "",
    target_id: Any = "",
    target_label: str = "",
    data: dict[str, Any] | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
) -> AuditEntry:
    """Append one entry. ``action`` is ``<object>.<verb>`` (``api_key.revoke``); ``target`` a
    model instance (its type, id and label are copied) or the explicit ``target_*``; ``actor``,
    ``ip`` and ``user_agent`` default to the request being served."""
    context = audit_context()
    actor = actor if actor is not None else context.actor
    if organization is not None:
        organization_id = organization.pk
    slug = organization.slug if organization is not None else ""
    if organization_id is not None and not slug:
        found = Organization.objects.filter(pk=organization_id).values_list("slug", flat=True)
        slug = found.first() or ""
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target_id or target.pk
        target_label = target_label or str(target)
    return AuditEntry.objects.create(
        organization_id=organization_id,
        organization_slug=slug,
        actor_id=actor.pk if actor is not None else None,
        actor_email=actor.email if actor is not None else "",
        action=action,
        target_type=target_type,
        target_id=str(target_id or ""),
        target_label=target_label[:200],
        data=json.loads(json.dumps(data or {}, cls=DjangoJSONEncoder)),
        ip=ip if ip is not None else context.ip,
        user_agent=(user_agent if user_agent is not None else context.user_agent)[:300],
    )
