"""Sign-up modes (INVENTIV_SIGNUP): open with mandatory e-mail verification, invite-only with a
one-time expiring invitation, closed; the default is invite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone

from apps.accounts.models import Invitation, Organization, User
from apps.accounts.services import invitation_create
from tests.processes import ROOT

pytestmark = pytest.mark.django_db

PASSWORD = "a long enough passphrase 9"


def sign_up(client: Client, email: str, query: str = "") -> Any:
    return client.post(
        f"/accounts/signup/{query}",
        {"email": email, "password1": PASSWORD, "password2": PASSWORD},
    )


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@override_settings(SIGNUP_MODE="closed")
def test_closed_refuses_the_sign_up_page_and_its_post() -> None:
    client = Client()
    page = client.get("/accounts/signup/")
    assert page.status_code == 403
    assert b"Sign-up is closed" in page.content
    posted = sign_up(client, "eve@example.com")
    assert posted.status_code == 403
    assert not User.objects.exists()
    # an invitation does not open a closed platform
    _, token = invitation_create(created_by=None)
    assert client.get(f"/accounts/signup/?invitation={token}").status_code == 403


@override_settings(SIGNUP_MODE="open")
def test_open_sign_up_needs_the_e_mail_verified_before_any_login() -> None:
    client = Client()
    assert client.get("/accounts/signup/").status_code == 200
    signed_up = sign_up(client, "nina@example.com")
    assert signed_up.status_code == 302
    assert signed_up["Location"] == "/accounts/confirm-email/"
    assert not logged_in(client)
    user = User.objects.get(email="nina@example.com")
    assert Organization.objects.get(personal_user=user)
    assert not EmailAddress.objects.get(user=user).verified

    # a login before verification is refused (and re-sends the e-mail)
    retry = Client()
    assert retry.post("/accounts/login/", {"login": user.email, "password": PASSWORD})
    assert not logged_in(retry)

    # the link of the e-mail verifies the address; then the login works
    assert len(mail.outbox) >= 1
    link = re.search(r"http://\S+/accounts/confirm-email/\S+/", mail.outbox[0].body)
    assert link is not None
    confirm = client.post(link.group(0).split("testserver", 1)[-1])
    assert confirm.status_code == 302
    assert EmailAddress.objects.get(user=user).verified
    later = Client()
    later.post("/accounts/login/", {"login": user.email, "password": PASSWORD})
    assert logged_in(later)


@override_settings(SIGNUP_MODE="invite")
def test_invite_only_admits_a_valid_invitation_once() -> None:
    client = Client()
    assert client.get("/accounts/signup/").status_code == 403
    assert sign_up(client, "tom@example.com").status_code == 403
    for bad in ["ivi_nope", "ivi_" + "0" * 16 + "_" + "x" * 43]:
        assert client.get(f"/accounts/signup/?invitation={bad}").status_code == 403

    # an expired invitation is refused
    expired, expired_token = invitation_create(created_by=None)
    Invitation.objects.filter(id=expired.id).update(expires_at=timezone.now() - timedelta(1))
    assert client.get(f"/accounts/signup/?invitation={expired_token}").status_code == 403

    # a valid one opens the form; its POST creates the user and uses it up
    invitation, token = invitation_create(created_by=None)
    assert client.get(f"/accounts/signup/?invitation={token}").status_code == 200
    assert sign_up(client, "tom@example.com").status_code == 302
    tom = User.objects.get(email="tom@example.com")
    invitation.refresh_from_db()
    assert invitation.used_by == tom and invitation.used_at is not None
    assert Organization.objects.get(personal_user=tom)

    # the same link again is refused, for anyone
    again = Client()
    assert again.get(f"/accounts/signup/?invitation={token}").status_code == 403
    assert sign_up(again, "zoe@example.com", f"?invitation={token}").status_code == 403
    assert not User.objects.filter(email="zoe@example.com").exists()


@override_settings(SIGNUP_MODE="invite")
def test_an_invitation_for_an_address_admits_only_that_address_verified() -> None:
    invitation, token = invitation_create(created_by=None, email="Ana@Example.com")
    client = Client()
    assert client.get(f"/accounts/signup/?invitation={token}").status_code == 200
    refused = sign_up(client, "mallory@example.com")
    assert refused.status_code == 403
    assert b"another e-mail address" in refused.content
    assert not User.objects.filter(email="mallory@example.com").exists()
    invitation.refresh_from_db()
    assert invitation.used_at is None  # the failed sign-up rolled back; still usable

    other = Client()
    assert other.get(f"/accounts/signup/?invitation={token}").status_code == 200
    assert sign_up(other, "ana@example.com").status_code == 302
    ana = User.objects.get(email="ana@example.com")
    assert EmailAddress.objects.get(user=ana).verified  # the invitation proved the address
    assert logged_in(other)


@override_settings(SIGNUP_MODE="invite")
def test_staff_invite_in_the_admin_and_with_the_management_command(staff: User) -> None:
    admin = Client()
    admin.force_login(staff)
    created = admin.post(
        "/admin/accounts/invitation/add/",
        {
            "email": "new@example.com",
            "expires_at_0": (timezone.now() + timedelta(days=2)).strftime("%Y-%m-%d"),
            "expires_at_1": "12:00:00",
        },
        follow=True,
    )
    assert created.status_code == 200
    shown = [str(m) for m in created.context["messages"]]
    link = next(m for m in shown if "accounts/signup/?invitation=" in m).split(": ", 1)[1]
    invitation = Invitation.objects.get()
    assert invitation.created_by == staff and invitation.email == "new@example.com"
    assert invitation.secret_hash not in link and invitation.lookup_id in link

    out = StringIO()
    call_command("invite", "--days", "1", stdout=out, stderr=StringIO())
    command_link = out.getvalue().strip()
    assert "/accounts/signup/?invitation=ivi_" in command_link
    client = Client()
    query = command_link.split("/accounts/signup/", 1)[1]
    assert client.get(f"/accounts/signup/{query}").status_code == 200
    assert Invitation.objects.count() == 2


def test_the_default_mode_is_invite_and_a_bad_value_is_refused() -> None:
    code = (
        "import django; django.setup(); "
        "from django.conf import settings; print(settings.SIGNUP_MODE)"
    )
    env = {k: v for k, v in os.environ.items() if k != "INVENTIV_SIGNUP"}
    env["DJANGO_SETTINGS_MODULE"] = "inventiv.settings"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.stdout.strip() == "invite", done.stderr
    bad = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "INVENTIV_SIGNUP": "sometimes"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "INVENTIV_SIGNUP" in bad.stderr
