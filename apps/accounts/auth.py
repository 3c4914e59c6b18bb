"""The signed-in user of a request, typed: views behind authentication get a ``User``, never the
``User | AnonymousUser`` union of ``request.user``."""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from apps.accounts.audit import audit_context_set_actor
from apps.accounts.models import PersonalAccessToken, User


def request_user(request: Request) -> User:
    """``request.user`` of an API view. The default ``IsAuthenticated`` permission (or a stricter
    one) runs first, so an anonymous user here is a misconfigured view: answered as 401/403."""
    user = request.user
    if not isinstance(user, User):
        raise NotAuthenticated()
    # The actor of the audit entries this request writes, and whether it came by single sign-on
    # (organizations may require it: apps/accounts/selectors.py).
    audit_context_set_actor(user, sso=request_sso(request))
    return user


SSO_SESSION_KEY = "inventiv_sso"


def request_sso(request: Request) -> bool | None:
    """True for a session signed in by single sign-on, False for a password (a session signed in
    otherwise, basic auth); for a personal access token, whether it was created by single
    sign-on (``PersonalAccessToken.sso``); None otherwise."""
    authenticator = getattr(request, "successful_authenticator", None)
    if isinstance(authenticator, BasicAuthentication):
        return False
    if isinstance(authenticator, SessionAuthentication):
        return bool(request.session.get(SSO_SESSION_KEY, False))
    if isinstance(request.auth, PersonalAccessToken):
        return request.auth.sso
    return None


class AuthenticatedHttpRequest(HttpRequest):
    """For the annotation of Django views behind ``login_required`` (as django-stubs advises)."""

    user: User
