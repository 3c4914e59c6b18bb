"""``manage.py invite [--email E] [--days N]``: a one-time sign-up invitation link (for
``INVENTIV_SIGNUP=invite``), printed once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from apps.accounts.services import invitation_create, invitation_link
from inventiv.errors import ApplicationError


class Command(BaseCommand):
    help = "Create a one-time sign-up invitation and print its link (shown once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", default="", help="only this address may use it")
        parser.add_argument("--days", type=float, default=7.0, help="validity (default 7)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["days"] <= 0:
            raise CommandError("--days must be positive")
        try:
            invitation, token = invitation_create(
                created_by=None,
                email=options["email"],
                expires_at=timezone.now() + timedelta(days=options["days"]),
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        if settings.SIGNUP_MODE != "invite":
            self.stderr.write(
                f"note: INVENTIV_SIGNUP is {settings.SIGNUP_MODE!r}; invitations are used only "
                "with INVENTIV_SIGNUP=invite"
            )
        self.stdout.write(invitation_link(token=token))
        self.stderr.write(f"valid once, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC")
