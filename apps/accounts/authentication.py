"""REST API authentication with personal access tokens (``Authorization: Bearer ivp_...``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, BasicAuthentication
from rest_framework.request import Request

from apps.accounts.models import PersonalAccessToken, User
from inventiv import crypto

TOKEN_PREFIX = "ivp_"
# last_used_at is refreshed at most this often (no write per request).
LAST_USED_RESOLUTION = timedelta(minutes=5)


class PersonalTokenAuthentication(BaseAuthentication):
    """Authenticates ``Bearer ivp_...``; other schemes are left to the next class. A malformed,
    unknown, wrong, revoked or expired token gets one 401 message."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, PersonalAccessToken] | None:
        scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
            return None
        refused = exceptions.AuthenticationFailed("Invalid, revoked or expired access token.")
        lookup_id = crypto.parse_lookup_id(TOKEN_PREFIX, token)
        if lookup_id is None:
            raise refused
        row = (
            PersonalAccessToken.objects.select_related("user")
            .filter(lookup_id=lookup_id, revoked_at__isnull=True)
            .first()
        )
        now = timezone.now()
        if (
            row is None
            or not crypto.token_matches(token, row.secret_hash)
            or (row.expires_at is not None and row.expires_at <= now)
            or not row.user.is_active
        ):
            raise refused
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            PersonalAccessToken.objects.filter(id=row.id).update(last_used_at=now)
        return row.user, row

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class LoginLockedOut(exceptions.APIException):
    """429 ``login_locked_out`` (mapped in inventiv.errors.DRF_CODES)."""

    status_code = 429
    default_code = "login_locked_out"
    default_detail = (
        "Too many failed logins for this account from this address; try again after the cool-off."
    )


class ThrottledBasicAuthentication(BasicAuthentication):
    """REST basic auth (development only, see settings), throttled like every login: the
    password check goes through ``authenticate`` and so through django-axes
    (apps/accounts/throttling.py). A locked-out user and address get 429 ``login_locked_out``,
    the right password included, instead of a 401 that would invite more guesses."""

    def authenticate_credentials(
        self, userid: str, password: str, request: Request | None = None
    ) -> tuple[User, None]:
        try:
            user, _ = super().authenticate_credentials(userid, password, request)
        except exceptions.AuthenticationFailed:
            if request is not None and getattr(request, "axes_locked_out", False):
                raise LoginLockedOut() from None
            raise
        return user, None


class PersonalTokenScheme(OpenApiAuthenticationExtension):
    """Documents the token in the OpenAPI schema (and the API UI's Authorize dialog)."""

    target_class = "apps.accounts.authentication.PersonalTokenAuthentication"
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "ivp_<lookup>_<secret>"}


class ThrottledBasicScheme(OpenApiAuthenticationExtension):
    """Documents basic auth (embedded and debug modes only) as drf-spectacular does DRF's."""

    target_class = "apps.accounts.authentication.ThrottledBasicAuthentication"
    name = "basicAuth"
    priority = -1

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "basic"}
