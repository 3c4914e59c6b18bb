"""The organization: members and roles, invitations (the link shown once, e-mailed too), the
audit log, creating a team and switching organization, accepting an invitation while signed
in. The same capability checks as the teams REST API (apps/accounts/api/teams.py)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from apps.accounts import selectors, services
from apps.accounts.choices import Role
from apps.accounts.permissions import Capability
from apps.portal.context import Portal, flash_error, form_errors, portal_view
from apps.portal.forms import InvitationForm, OrganizationForm, RoleForm
from inventiv.errors import ApplicationError

AUDIT_ROWS = 50


def _context(portal: Portal, **extra: Any) -> dict[str, Any]:
    org = portal.organization
    can_invite = portal.can(Capability.INVITATIONS_MANAGE)
    context: dict[str, Any] = {
        "portal": portal,
        "members": list(selectors.membership_list_for_organization(organization=org)),
        "invitations": (
            list(selectors.invitation_list_for_organization(organization=org)[:50])
            if can_invite
            else []
        ),
        "audit": (
            list(selectors.audit_list_for_organization(organization=org)[:AUDIT_ROWS])
            if portal.can(Capability.AUDIT_READ)
            else None
        ),
        "can_invite": can_invite,
        "can_roles": portal.can(Capability.ROLES_MANAGE),
        "can_remove": portal.can(Capability.MEMBERS_MANAGE),
        "roles": Role.choices,
        "invite_form": InvitationForm(),
        "org_form": OrganizationForm(),
        "now": timezone.now(),
    }
    context.update(extra)
    return context


@portal_view
def organization(request: HttpRequest, portal: Portal) -> HttpResponse:
    return render(request, "portal/organization.html", _context(portal))


@require_POST
@portal_view
def invite(request: HttpRequest, portal: Portal) -> HttpResponse:
    portal.require(Capability.INVITATIONS_MANAGE)
    form = InvitationForm(request.POST)
    if form.is_valid():
        role = Role(form.cleaned_data["role"])
        try:
            if role == Role.OWNER:
                portal.require(Capability.ROLES_MANAGE)
            invitation, token = services.invitation_create(
                created_by=portal.user,
                email=form.cleaned_data["email"],
                organization=portal.organization,
                role=role,
            )
        except ApplicationError as exc:
            form_errors(form, exc)
        else:
            link = services.invitation_link(token=token)
            return render(
                request,
                "portal/organization.html",
                _context(portal, created_link=link, created_invitation=invitation),
                status=201,
            )
    return render(
        request, "portal/organization.html", _context(portal, invite_form=form), status=400
    )


@require_POST
@portal_view
def invitation_revoke(request: HttpRequest, portal: Portal, invitation_id: int) -> HttpResponse:
    portal.require(Capability.INVITATIONS_MANAGE)
    invitation = selectors.invitation_get_for_organization(
        organization=portal.organization, invitation_id=invitation_id
    )
    try:
        services.invitation_revoke(invitation=invitation)
        messages.success(request, f"Invitation of {invitation.email} revoked.")
    except ApplicationError as exc:
        flash_error(request, exc)
    return redirect("portal:organization")


@require_POST
@portal_view
def member_role(request: HttpRequest, portal: Portal, user_id: int) -> HttpResponse:
    portal.require(Capability.ROLES_MANAGE)
    target = selectors.membership_get_for_organization(
        organization=portal.organization, user_id=user_id
    )
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Pick a role: owner, admin or member.")
        return redirect("portal:organization")
    try:
        services.membership_set_role(membership=target, role=Role(form.cleaned_data["role"]))
        messages.success(request, f"{target.user.email} is now {form.cleaned_data['role']}.")
    except ApplicationError as exc:
        flash_error(request, exc)
    return redirect("portal:organization")


@require_POST
@portal_view
def member_remove(request: HttpRequest, portal: Portal, user_id: int) -> HttpResponse:
    portal.require(Capability.MEMBERS_MANAGE)
    target = selectors.membership_get_for_organization(
        organization=portal.organization, user_id=user_id
    )
    try:
        services.membership_remove(membership=target, by=portal.user)
        messages.success(request, f"{target.user.email} removed.")
    except ApplicationError as exc:
        flash_error(request, exc)
    return redirect("portal:organization")


@require_POST
@portal_view
def switch(request: HttpRequest, portal: Portal) -> HttpResponse:
    """Work in another of the user's organizations (their default one, as REST's
    ``POST /organizations/{slug}/default/``)."""
    slug = request.POST.get("organization", "")
    try:
        membership = selectors.membership_get(user=portal.user, organization_slug=slug)
    except ApplicationError as exc:
        flash_error(request, exc)
        return redirect("portal:dashboard")
    services.user_set_default_organization(user=portal.user, organization=membership.organization)
    messages.success(request, f"Now working in {membership.organization.name}.")
    target = request.POST.get("next", "")
    safe = url_has_allowed_host_and_scheme(target, allowed_hosts=None) and target.startswith("/")
    return redirect(target if safe else "/")


@require_POST
@portal_view
def create(request: HttpRequest, portal: Portal) -> HttpResponse:
    form = OrganizationForm(request.POST)
    if form.is_valid():
        org = services.organization_create(name=form.cleaned_data["name"], owner=portal.user)
        services.user_set_default_organization(user=portal.user, organization=org)
        messages.success(request, f"Organization {org.name} created; you own it.")
        return redirect("portal:organization")
    return render(request, "portal/organization.html", _context(portal, org_form=form), status=400)


@portal_view
def accept(request: HttpRequest, portal: Portal) -> HttpResponse:
    """An invitation link opened by someone already signed in: GET shows it, POST accepts."""
    token = request.POST.get("token") or request.GET.get("invitation") or ""
    invitation = selectors.invitation_get_valid(token=token)
    if request.method == "POST":
        try:
            if invitation is None or invitation.organization is None:
                raise services.InvitationRefused(
                    "This invitation is unknown, expired, revoked or already used."
                )
            accepted = services.invitation_accept(token=token, user=portal.user)
        except ApplicationError as exc:
            flash_error(request, exc)
            return redirect("portal:dashboard")
        assert accepted.organization is not None
        services.user_set_default_organization(user=portal.user, organization=accepted.organization)
        messages.success(
            request, f"Welcome to {accepted.organization.name}: you joined as {accepted.role}."
        )
        return redirect("portal:dashboard")
    return render(
        request,
        "portal/accept.html",
        {"portal": portal, "invitation": invitation, "token": token},
    )
