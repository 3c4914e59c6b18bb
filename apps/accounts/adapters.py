"""allauth's hooks: who may sign up (``INVENTIV_SIGNUP``), and what a new user gets.

* ``open``: anyone, with mandatory e-mail verification (``ACCOUNT_EMAIL_VERIFICATION``);
* ``invite``: only with a valid invitation (``/accounts/signup/?invitation=ivi_...``: the token
  is kept in the session for the form's POST and used once, in the sign-up's transaction); an
  invitation naming an address admits only that address, taken as verified;
* ``closed``: nobody; the sign-up page answers 403.

An organization's invitation (docs/teams.md) is such an invitation too: signing up with it (in
the ``invite`` or ``open`` mode) also makes the new user a member with its role.

The refusal is a 403 page saying why, for the form's GET and POST alike.
"""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.accounts.choices import SignupMode
from apps.accounts.selectors import invitation_get_valid
from apps.accounts.services import (
    InvitationRefused,
    invitation_accept,
    organization_ensure_personal,
)

INVITATION_SESSION_KEY = "inventiv_invitation"
INVITATION_PARAM = "invitation"


def signup_refused(request: HttpRequest, message: str) -> HttpResponse:
    return render(
        request,
        "account/signup_closed.html",
        {"message": message, "mode": settings.SIGNUP_MODE},
        status=403,
    )


class AccountAdapter(DefaultAccountAdapter):
    """Applies the sign-up mode; gives every user who signs up a personal organization."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        mode = SignupMode(settings.SIGNUP_MODE)
        if mode == SignupMode.OPEN:
            # An organization's invitation is honoured in the open mode too (at save).
            if token := request.GET.get(INVITATION_PARAM):
                request.session[INVITATION_SESSION_KEY] = token
            return True
        if mode == SignupMode.CLOSED:
            raise ImmediateHttpResponse(
                signup_refused(request, "Sign-up is closed on this platform.")
            )
        token = request.GET.get(INVITATION_PARAM)
        if token:
            request.session[INVITATION_SESSION_KEY] = token
        invitation = invitation_get_valid(token=request.session.get(INVITATION_SESSION_KEY))
        if invitation is None:
            raise ImmediateHttpResponse(
                signup_refused(
                    request,
                    "Sign-up is by invitation only: open the invitation link you were given "
                    "(it is valid once, until it expires).",
                )
            )
        if invitation.email:
            # Staff sent the link to this address: signing up with it needs no second check
            # (allauth's hook for invitations; any other address is refused at save).
            self.stash_verified_email(request, invitation.email)
        return True

    def save_user(self, request: Any, user: Any, form: Any, commit: bool = True) -> Any:
        if not commit:
            return super().save_user(request, user, form, commit=False)
        try:
            with transaction.atomic():
                user = super().save_user(request, user, form, commit=True)
                organization_ensure_personal(user=user)
                token = request.session.pop(INVITATION_SESSION_KEY, None)
                if settings.SIGNUP_MODE == SignupMode.INVITE or token:
                    # Also joins the invitation's organization with its role, if it has one.
                    invitation_accept(token=token, user=user)
        except InvitationRefused as exc:
            raise ImmediateHttpResponse(signup_refused(request, exc.message)) from None
        return user


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    """Single sign-on (OpenID Connect): its users may get an account when INVENTIV_OIDC_SIGNUP
    is on (the identity provider decides who they are), and get a personal organization."""

    def is_open_for_signup(self, request: HttpRequest, sociallogin: Any) -> bool:
        return bool(settings.OIDC_SIGNUP)

    def save_user(self, request: HttpRequest, sociallogin: Any, form: Any = None) -> Any:
        with transaction.atomic():
            user = super().save_user(request, sociallogin, form)
            organization_ensure_personal(user=user)
        return user
