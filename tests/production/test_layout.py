"""The production layout's files agree with each other and with the settings: the Dockerfile's
user and state directory, compose's commands and health checks, .env.example's refusals; and
the settings behaviours they rely on (probes whatever the Host, derived allowed hosts, the TLS
switch, the SECRET_KEY and state-directory refusals, ensure_providers)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

from apps.instances.choices import ProviderKind
from apps.instances.models import Provider
from tests.production import layout

ROOT = layout.ROOT


# --- the files ------------------------------------------------------------------------------
def test_the_image_runs_as_nobody_with_a_state_directory_it_owns() -> None:
    image = layout.dockerfile()
    assert image.user == "nobody"
    assert image.env["INVENTIV_STATE_DIR"] == "/var/lib/inventiv"
    created = [step for step in image.run if "/var/lib/inventiv" in step]
    assert created and "chown nobody:" in created[0] and "mkdir -p /var/lib/inventiv" in created[0]
    assert "VOLUME /var/lib/inventiv" in (ROOT / "Dockerfile").read_text()
    assert layout.env_example()["INVENTIV_STATE_DIR"] == "/var/lib/inventiv"
    for name in layout.APP_SERVICES:
        assert "state:/var/lib/inventiv" in layout.service(name)["volumes"], name
    assert "state" in layout.compose()["volumes"]


def test_the_image_leaves_secrets_and_the_developer_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".inventiv/", ".venv", ".git"):
        assert entry in ignored


def test_every_app_service_runs_the_image_with_env_file_and_a_known_entry_point() -> None:
    for name in layout.APP_SERVICES:
        svc = layout.service(name)
        assert svc["image"] == "inventiv-agents:latest" and svc["build"] == "."
        assert svc["env_file"] == ".env"
    gateway = layout.service("gateway")["command"]
    assert gateway[:3] == ["python", "-m", "apps.gateway"] and "--lifespan" not in gateway
    graceful = int(gateway[gateway.index("--graceful-timeout") + 1])
    grace = int(str(layout.service("gateway")["stop_grace_period"]).removesuffix("s"))
    assert graceful < grace, "the final usage flush must run before the container is killed"
    assert "--schedule" not in layout.service("beat")["command"]
    migrate = layout.service("migrate")["command"]
    assert migrate[:2] == ["sh", "-c"] and "manage.py ensure_providers" in migrate[2]
    worker_check = layout.service("worker")["healthcheck"]["test"]
    assert worker_check[0] == "CMD-SHELL" and "$HOSTNAME" in worker_check[1]
    assert layout.service("worker")["network_mode"] == "service:gateway"


def test_the_gateway_entry_point_runs_with_lifespan_and_a_graceful_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from apps.gateway import __main__ as entry

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs, app=app))
    command = layout.service("gateway")["command"]
    assert entry.main(command[3:]) == 0
    assert seen["app"] == "apps.gateway.asgi:application"
    assert seen["lifespan"] == "on"
    assert seen["timeout_graceful_shutdown"] == 20
    assert seen["workers"] == 2 and seen["port"] == 8002


def test_flower_refuses_to_start_without_basic_auth_and_listens_on_loopback_only() -> None:
    flower = layout.service("flower")
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    argv = flower["command"]
    env = {"PATH": "/usr/bin:/bin", "FLOWER_BASIC_AUTH": ""}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 1
    assert "FLOWER_BASIC_AUTH" in done.stderr
    assert "FLOWER_BASIC_AUTH" in layout.required_variables()


def test_env_example_marks_what_the_operator_must_fill_in() -> None:
    assert layout.required_variables() == ["SECRET_KEY", "FLOWER_BASIC_AUTH"]
    example = layout.env_example()
    assert example["INVENTIV_TLS"] == "off"
    assert example["INVENTIV_PUBLIC_URL"].startswith("http://")  # coherent with TLS off


# --- settings, in a subprocess with the production environment of .env.example ----------------
def _settings(tmp_path: Path, code: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
    env.update(layout.env_example())
    env.update(
        DATABASE_URL="postgres://u:p@db.example.com:5432/inventiv",
        REDIS_URL="redis://redis.example.com:6379/0",
        SECRET_KEY=secrets.token_urlsafe(50),
        INVENTIV_STATE_DIR=str(tmp_path / "state"),
        STATIC_ROOT=str(tmp_path / "static"),
        DJANGO_SETTINGS_MODULE="inventiv.settings",
    )
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "-c", f"from django.conf import settings as s; {code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_refuses_the_placeholder_and_short_secret_keys(tmp_path: Path) -> None:
    placeholder = layout.env_example()["SECRET_KEY"]
    for key in (placeholder, "short-key", "x" * 40, "django-insecure-" + "a1b2c3d4" * 6):
        done = _settings(tmp_path, "s.SECRET_KEY", SECRET_KEY=key)
        assert done.returncode != 0, key
        assert "SECRET_KEY is a placeholder or too weak" in done.stderr, key
    assert _settings(tmp_path, "s.SECRET_KEY").returncode == 0


def test_it_explains_a_state_directory_it_cannot_create(tmp_path: Path) -> None:
    # (A path under a file fails for root too; the image's nobody meets the same error for an
    # unmounted /var/lib/inventiv.)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = _settings(tmp_path, "s.STATE_DIR", INVENTIV_STATE_DIR=str(blocker / "state"))
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and "PermissionError" not in done.stderr
    assert f"INVENTIV_STATE_DIR={blocker / 'state'} cannot be created" in done.stderr


def test_tls_off_serves_plain_http_and_proxy_trusts_the_forwarded_scheme(tmp_path: Path) -> None:
    names = [
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_PROXY_SSL_HEADER",
    ]
    code = f"print([getattr(s, n) for n in {names!r}])"
    off = _settings(tmp_path, code, INVENTIV_TLS="off")
    assert off.stdout.strip() == "[False, False, False, 0, None]", off.stderr
    proxy = _settings(tmp_path, code, INVENTIV_TLS="proxy")
    assert proxy.stdout.strip() == (
        "[True, True, True, 31536000, ('HTTP_X_FORWARDED_PROTO', 'https')]"
    ), proxy.stderr
    unset = _settings(tmp_path, code, INVENTIV_TLS="")
    assert unset.stdout == proxy.stdout  # production's default is the safe one
    bad = _settings(tmp_path, code, INVENTIV_TLS="maybe")
    assert bad.returncode != 0 and "INVENTIV_TLS must be one of proxy, off" in bad.stderr


def test_the_deploy_check_says_plain_http_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env={
            **layout.env_example(),
            "PATH": os.environ["PATH"],
            "DATABASE_URL": "postgres://u:p@db.example.com:5432/inventiv",
            "REDIS_URL": "redis://redis.example.com:6379/0",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "INVENTIV_STATE_DIR": str(tmp_path / "state"),
            "STATIC_ROOT": str(tmp_path / "static"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "inventiv.W002" in out
    for generic in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert generic not in out


def test_the_agent_api_and_public_hosts_are_allowed(tmp_path: Path) -> None:
    done = _settings(
        tmp_path,
        "print(s.ALLOWED_HOSTS)",
        INVENTIV_AGENT_API_URL="http://web:8000",
        INVENTIV_PUBLIC_URL="https://[2001:db8::1]:8443",
    )
    assert done.stdout.strip() == "['inventiv.example.com', '[2001:db8::1]', 'web']", done.stderr


# --- the probes and the providers, in process -------------------------------------------------
@override_settings(ALLOWED_HOSTS=["inventiv.example.com"])
@pytest.mark.django_db
def test_probes_answer_whatever_the_host_and_nothing_else_does() -> None:
    client = Client()
    for path in ("/healthz", "/readyz"):
        for host in ("127.0.0.1:8000", "evil.example"):
            assert client.get(path, HTTP_HOST=host).status_code == 200, (path, host)
    assert client.get("/accounts/login/", HTTP_HOST="127.0.0.1:8000").status_code == 400
    assert client.get("/api/v1/me/", HTTP_HOST="evil.example").status_code == 400
    assert client.post("/healthz", HTTP_HOST="evil.example").status_code == 400
    assert client.get("/accounts/login/", HTTP_HOST="inventiv.example.com").status_code == 200


@pytest.mark.django_db
def test_ensure_providers_creates_the_local_provider_once_and_respects_the_operator() -> None:
    out = StringIO()
    with override_settings(LOCAL_PROVIDER_ENABLED=False):
        call_command("ensure_providers", stdout=out)
    assert not Provider.objects.exists()
    with override_settings(LOCAL_PROVIDER_ENABLED=True):
        call_command("ensure_providers", stdout=out)
        call_command("ensure_providers", stdout=out)
        provider = Provider.objects.get()
        assert (provider.name, provider.kind, provider.enabled) == (
            "local",
            ProviderKind.LOCAL,
            True,
        )
        provider.enabled = False  # the operator disabled it in the admin
        provider.save(update_fields=["enabled"])
        call_command("ensure_providers", stdout=out)
    assert Provider.objects.get().enabled is False
    assert "local provider: created" in out.getvalue()
    assert "present, disabled" in out.getvalue()
