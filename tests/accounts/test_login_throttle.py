"""Login throttling (django-axes): the admin's login, allauth's login and REST basic auth lock
a user out from one address after INVENTIV_LOGIN_FAILURE_LIMIT failures — the right password
included — for the cool-off; another address, another user, and the cool-off's end are not
locked. In-process on PostgreSQL, and over real HTTP on the embedded platform (ASGI, SQLite)."""

from __future__ import annotations

import base64
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.test import Client
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from apps.accounts.authentication import ThrottledBasicAuthentication
from apps.accounts.models import User
from tests.processes import ROOT, ProcessGroup, embedded_env

PASSWORD = "correct-horse-9"
WRONG = 20


def admin_login(client: Client, email: str, password: str, ip: str = "10.1.1.1") -> Any:
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": email, "password": password},
        REMOTE_ADDR=ip,
    )


def portal_login(client: Client, email: str, password: str, ip: str = "10.1.1.1") -> Any:
    return client.post("/accounts/login/", {"login": email, "password": password}, REMOTE_ADDR=ip)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.django_db
@pytest.mark.parametrize("login", [admin_login, portal_login], ids=["admin", "allauth"])
def test_twenty_wrong_passwords_lock_the_user_out_from_that_address(
    staff: User, login: Any
) -> None:
    client = Client()
    statuses = [login(client, staff.email, f"wrong-{i}").status_code for i in range(WRONG)]
    limit = settings.AXES_FAILURE_LIMIT
    assert set(statuses[: limit - 1]) == {200}  # the form again, with its error
    assert set(statuses[limit - 1 :]) == {429}

    # the right password is refused while locked, with the cool-off in Retry-After
    right = login(client, staff.email, PASSWORD)
    assert right.status_code == 429
    assert int(right["Retry-After"]) == settings.AXES_COOLOFF_TIME.total_seconds()
    assert b"Too many failed logins" in right.content
    assert not logged_in(client)
    # the address of the counter is the user's, whatever the case of the e-mail
    assert login(client, staff.email.upper(), PASSWORD).status_code == 429

    # another address is not locked (user + IP), nor is another user from this address
    elsewhere = Client()
    assert login(elsewhere, staff.email, PASSWORD, ip="10.2.2.2").status_code == 302
    assert logged_in(elsewhere)

    # when the cool-off has passed, the right password logs in and resets the counter
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(hours=1))
    assert login(client, staff.email, PASSWORD).status_code == 302
    assert logged_in(client)
    assert (
        not AccessAttempt.objects.filter(username=staff.email)
        .exclude(ip_address="10.2.2.2")
        .exists()
    )


@pytest.mark.django_db
def test_failures_below_the_limit_then_a_success_reset_the_count(staff: User) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert admin_login(client, staff.email, "wrong").status_code == 200
    assert admin_login(client, staff.email, PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert admin_login(client, staff.email, "wrong").status_code == 200
    assert admin_login(client, staff.email, PASSWORD).status_code == 302


@pytest.mark.django_db
def test_an_unknown_user_is_throttled_too(db: Any) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        admin_login(client, "nobody@example.com", "guess")
    assert admin_login(client, "nobody@example.com", "guess").status_code == 429


# --- over real HTTP: the embedded platform (ASGI, SQLite), REST basic auth ------------------

CREATE_USER = f"""
import django
django.setup()
from apps.accounts.services import user_create
user_create(email="olivia@example.com", password="{PASSWORD}", is_staff=True)
"""


def basic(email: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{email}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_the_embedded_platform_throttles_basic_auth_and_the_admin(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "state")
    subprocess.run([sys.executable, "-c", CREATE_USER], cwd=ROOT, env=env, check=True)
    group = ProcessGroup(env, tmp_path)
    try:
        _, url = group.web()
        # a second client address on the loopback network
        other = httpx.Client(
            base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10
        )
        with httpx.Client(base_url=url, timeout=10) as client:
            me = "/api/v1/me/"
            assert client.get(me, headers=basic("olivia@example.com", PASSWORD)).status_code == 200
            codes = [
                client.get(me, headers=basic("olivia@example.com", f"w{i}")).status_code
                for i in range(WRONG)
            ]
            assert codes[0] == 401 and codes[-1] == 429
            locked = client.get(me, headers=basic("olivia@example.com", PASSWORD))
            assert locked.status_code == 429
            assert locked.json()["error"]["code"] == "login_locked_out"
            assert locked.json()["error"]["type"] == "rate_limit_error"
            # the admin's login form, same user and address: locked as well
            client.get("/admin/login/")
            admin = client.post(
                "/admin/login/?next=/admin/",
                data={
                    "username": "olivia@example.com",
                    "password": PASSWORD,
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                },
                headers={"Referer": url + "/admin/login/"},
            )
            assert admin.status_code == 429
            assert "sessionid" not in client.cookies
        # from another address the right password works
        assert other.get(me, headers=basic("olivia@example.com", PASSWORD)).status_code == 200
        other.close()
    finally:
        group.stop_all()


def test_the_throttled_basic_auth_is_documented_in_the_schema() -> None:
    scheme = OpenApiAuthenticationExtension.get_match(ThrottledBasicAuthentication())
    assert scheme is not None
    assert scheme.get_security_definition(None) == {"type": "http", "scheme": "basic"}
