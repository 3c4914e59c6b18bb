"""Login throttling with django-axes: every password check that goes through Django's
``authenticate`` (the admin's login, allauth's login, REST basic auth in development) counts
its failures per user *and* client IP; after ``INVENTIV_LOGIN_FAILURE_LIMIT`` failures that
pair is locked out for ``INVENTIV_LOGIN_COOLOFF_S`` — the right password included — and every
failed try during the lockout starts the cool-off again. A success resets the count.

Settings: the ``AXES_*`` block of ``inventiv/settings.py``; documented in docs/security.md.
"""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from inventiv.error_codes import CODES, envelope

LOCKED_OUT_CODE = "login_locked_out"
# Form fields and ``authenticate`` keywords that carry the login: the admin's ``username``,
# allauth's ``login``/``email``, DRF basic auth's ``email`` (our USERNAME_FIELD).
_LOGIN_FIELDS = ("username", "email", "login")


class LoginThrottleBackend(AxesStandaloneBackend):
    """axes' backend, first of ``AUTHENTICATION_BACKENDS``. A check with no request (a
    management command, the test client's ``login``) has no client to throttle: it is left
    to the next backends instead of raising."""

    def authenticate(self, request: Any, username: Any = None, password: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
        if request is None:
            return None
        return super().authenticate(request, username, password, **kw)


def login_username(request: Any, credentials: dict[str, Any] | None) -> str | None:
    """The login being tried, normalised like our e-mails (stripped, lower case), so that
    ``Olivia@Example.com`` and ``olivia@example.com`` share one counter."""
    sources: list[Any] = [credentials or {}]
    if request is not None:
        sources.append(getattr(request, "POST", {}) or {})
    for source in sources:
        for name in _LOGIN_FIELDS:
            value = source.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip().lower()
    return None


def client_ip(request: Any) -> str | None:
    """The client's address: ``REMOTE_ADDR``, or behind ``INVENTIV_TRUSTED_PROXY_COUNT``
    reverse proxies, the address the outermost of them saw (``X-Forwarded-For``, counted from
    the right, so a client cannot forge it)."""
    meta = request.META
    count = settings.TRUSTED_PROXY_COUNT
    if count:
        hops = [h.strip() for h in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if len(hops) >= count:
            return hops[-count]
    remote = meta.get("REMOTE_ADDR")
    return str(remote) if remote else None


def lockout_response(request: HttpRequest, *args: Any) -> HttpResponse:
    """429 for a locked-out user and address: the error envelope under /api/ and /internal/,
    the lockout page elsewhere (admin, portal). ``Retry-After`` is the cool-off."""
    cool_off = get_cool_off(request)
    seconds = int(cool_off.total_seconds()) if cool_off else 0
    minutes = max(1, round(seconds / 60))
    message = (
        "Too many failed logins for this account from this address: try again in "
        f"{minutes} minute(s)."
    )
    response: HttpResponse
    if request.path.startswith(("/api/", "/internal/")):
        response = JsonResponse(
            envelope(message, LOCKED_OUT_CODE), status=CODES[LOCKED_OUT_CODE].status
        )
    else:
        response = render(
            request,
            "account/lockout.html",
            {"message": message, "minutes": minutes},
            status=CODES[LOCKED_OUT_CODE].status,
        )
    if seconds:
        response["Retry-After"] = str(seconds)
    return response
