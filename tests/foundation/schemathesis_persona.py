"""Schemathesis hooks for tests/foundation/test_schema_conformance.py: the run's persona.

Loaded by the schemathesis CLI (``SCHEMATHESIS_HOOKS``) in its own process, on the test's
database. Every request carries a personal access token of the persona named by
``INVENTIV_SCHEMA_PERSONA``. The run exercises ``POST /access-tokens/{id}/revoke/`` like every
other operation and sooner or later revokes the very token it is using: before each request
the token is checked and, once revoked, replaced by a new one, so that every operation is
tested as a signed-in user and a 401 always means what it says.
"""

from __future__ import annotations

import os
import threading

import django

# The name of the tokens this module makes (the test tells them from those the run created).
PERSONA_TOKEN = "schemathesis persona"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inventiv.settings")
django.setup()

import schemathesis  # noqa: E402
from django.db import connection  # noqa: E402

from apps.accounts.models import PersonalAccessToken, User  # noqa: E402
from apps.accounts.services import access_token_create  # noqa: E402


@schemathesis.auth(refresh_interval=None)
class PersonaToken:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: tuple[int, str] | None = None

    def _current(self) -> str:
        try:
            return self._current_token()
        finally:
            # Schemathesis calls from threads that come and go: give the connection back to
            # the process's pool (a thread's connection is returned only when closed).
            connection.close()

    def _current_token(self) -> str:
        with self._lock:
            live = (
                self._token is not None
                and PersonalAccessToken.objects.filter(
                    pk=self._token[0], revoked_at__isnull=True
                ).exists()
            )
            if not live:
                user = User.objects.get(email=os.environ["INVENTIV_SCHEMA_PERSONA"])
                token, plaintext = access_token_create(user=user, name=PERSONA_TOKEN)
                self._token = (token.pk, plaintext)
            assert self._token is not None
            return self._token[1]

    def get(self, case: schemathesis.Case, ctx: object) -> str:
        return self._current()

    def set(self, case: schemathesis.Case, data: str, ctx: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {self._current()}"}
