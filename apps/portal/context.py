"""What every portal view shares: the signed-in user (typed, recorded as the audit actor), the
organization the user is working in, access checks through the same selectors as REST, and one
way to turn the services' errors into words on the page.

Pages never filter tenants themselves: reads go through the apps' ``*_for_user`` selectors
(someone else's object is the same 404 as a missing one) and writes check the capability the
REST endpoint checks (``apps/accounts/permissions.py``) before calling the same service.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.accounts.audit import audit_context_set_actor
from apps.accounts.auth import SSO_SESSION_KEY
from apps.accounts.models import Membership, Organization, User
from apps.accounts.permissions import Capability, role_can
from apps.accounts.selectors import (
    membership_check,
    organization_list_for_user,
    organization_membership_for_user,
)
from inventiv.errors import ApplicationError, Forbidden, NotFound

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Portal:
    """The request's user, their membership of the organization they work in, and what their
    role there may do (for the templates: show only the buttons that would work)."""

    user: User
    membership: Membership
    sso: bool

    @property
    def organization(self) -> Organization:
        return self.membership.organization

    def can(self, capability: Capability | str) -> bool:
        return role_can(self.membership.role, Capability(capability))

    def mine(self, obj: T) -> T:
        """``obj`` if it belongs to the organization the user works in, else the same 404 as a
        missing one: the role checked by ``require`` is the one in *this* organization, so an
        object of another organization the user belongs to must not be acted on from here."""
        if getattr(obj, "organization_id", None) != self.membership.organization_id:
            raise NotFound("Not found.")
        return obj

    def require(self, capability: Capability) -> None:
        """403 (``Forbidden``, in words) unless the role may ``capability``."""
        membership_check(membership=self.membership, capability=capability)

    @property
    def organizations(self) -> list[Organization]:
        return list(organization_list_for_user(user=self.user))


def portal_of(request: HttpRequest) -> Portal:
    user = request.user
    assert isinstance(user, User), "behind login_required"
    sso = bool(request.session.get(SSO_SESSION_KEY, False))
    # The audit trail's actor for the services this request calls (REST does the same in
    # request_user), and whether the session came by single sign-on (organization_ids_for_user).
    audit_context_set_actor(user, sso=sso)
    try:
        membership = organization_membership_for_user(user=user, slug=None)
    except Forbidden as exc:
        # A password session whose default organization requires single sign-on works in
        # another of the user's organizations (their own first) rather than being locked out
        # of every page, switching included; with none left, the refusal stands.
        if exc.code != "sso_required":
            raise
        fallback = _membership_without_sso(user)
        if fallback is None:
            raise
        membership = fallback
    return Portal(user=user, membership=membership, sso=sso)


def _membership_without_sso(user: User) -> Membership | None:
    return (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__require_sso=False)
        .order_by("-organization__personal", "organization__name")
        .first()
    )


def error_page(request: HttpRequest, exc: ApplicationError) -> HttpResponse:
    return render(
        request,
        "portal/error.html",
        {"message": exc.message, "code": exc.code},
        status=exc.status_code,
    )


def portal_view(
    view: Callable[Concatenate[HttpRequest, Portal, P], HttpResponse],
) -> Callable[Concatenate[HttpRequest, P], HttpResponse]:
    """A signed-in page: the view gets the ``Portal`` of the request. A ``NotFound`` or
    ``Forbidden`` from a selector or check is a page saying so (404/403)."""

    @login_required
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: P.args, **kwargs: P.kwargs) -> HttpResponse:
        try:
            return view(request, portal_of(request), *args, **kwargs)
        except (NotFound, Forbidden) as exc:
            return error_page(request, exc)

    return wrapper


def flash_error(request: HttpRequest, exc: ApplicationError) -> None:
    """A service's refusal, in words, shown on the next page."""
    messages.error(request, exc.message)


def form_errors(form: Any, exc: ApplicationError) -> None:
    """Attach a service's refusal to the form field it names (``param``), else to the form."""
    field = (exc.param or "").split(".")[0]
    message = exc.message
    if field and field in form.fields:
        prefix = f"{field}: "
        form.add_error(field, message.removeprefix(prefix))
    else:
        form.add_error(None, message)
