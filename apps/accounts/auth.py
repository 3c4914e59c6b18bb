"""The signed-in user of a request, typed: views behind authentication get a ``User``, never the
``User | AnonymousUser`` union of ``request.user``."""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from apps.accounts.audit import audit_context_set_actor
from apps.accounts.models import User


def request_user(request: Request) -> User:
    """``request.user`` of an API view. The default ``IsAuthenticated`` permission (or a stricter
    one) runs first, so an anonymous user here is a misconfigured view: answered as 401/403."""
    user = request.user
    if not isinstance(user, User):
        raise NotAuthenticated()
    audit_context_set_actor(user)  # the actor of the audit entries this request writes
    return user


class AuthenticatedHttpRequest(HttpRequest):
    """For the annotation of Django views behind ``login_required`` (as django-stubs advises)."""

    user: User
