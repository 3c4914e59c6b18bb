"""The platform's skeleton: health, pages, schema, admin, settings, migrations, compose."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client

from inventiv.env import env_bool, env_float, env_int, env_list
from tests.processes import ROOT


def test_it_answers_liveness_without_touching_anything(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_it_reports_ready_when_database_and_redis_answer(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["redis"]["ok"] is True


@pytest.mark.django_db
def test_it_reports_not_ready_when_redis_is_down(client: Client, settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == {
        "ok": False,
        "error": "ConnectionError",
        "ms": response.json()["checks"]["redis"]["ms"],
    }


@pytest.mark.django_db
def test_it_serves_the_login_page_schema_and_api_ui(client: Client) -> None:
    assert client.get("/accounts/login/").status_code == 200
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/model-codes/" in schema.content
    assert client.get("/api/docs/").status_code == 200


@pytest.mark.django_db
def test_it_sends_anonymous_visitors_of_the_portal_to_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_it_lets_staff_into_the_admin(client: Client, staff: Any) -> None:
    assert client.login(email="operator@example.com", password="correct-horse-9")
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/instances/instance/").status_code == 200


@pytest.mark.django_db
def test_it_answers_api_errors_in_the_openai_envelope(client: Client) -> None:
    response = client.get("/api/v1/model-codes/")
    assert response.status_code in (401, 403)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.django_db
def test_it_has_no_missing_migrations() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_it_rejects_malformed_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "maybe")
    monkeypatch.setenv("X_INT", "ten")
    monkeypatch.setenv("X_FLOAT", "-1")
    monkeypatch.setenv("X_LIST", "a, b,,c")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL"):
        env_bool("X_BOOL")
    with pytest.raises(ImproperlyConfigured, match="X_INT"):
        env_int("X_INT", 1)
    with pytest.raises(ImproperlyConfigured, match="at least 0"):
        env_float("X_FLOAT", 1.0, minimum=0)
    assert env_list("X_LIST") == ["a", "b", "c"]


def _production_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "SESSION_", "CSRF_"))
    }
    env.update(
        DATABASE_URL="postgres://u:p@db.example.com:5432/inventiv",
        REDIS_URL="redis://redis.example.com:6379/0",
        SECRET_KEY="x" * 20 + "-production-only-" + "y" * 20,
        DJANGO_DEBUG="false",
        ALLOWED_HOSTS="inventiv.example.com",
        INVENTIV_PUBLIC_URL="https://inventiv.example.com",
    )
    env.update(extra)
    env.pop("INVENTIV_TEST_DB_NAME", None)
    return env


def test_it_passes_the_deployment_checklist_in_production_settings() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_production_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_warns_when_agents_would_talk_to_the_control_plane_in_cleartext() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_production_env(INVENTIV_PUBLIC_URL="http://inventiv.example.com"),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "inventiv.W001" in result.stderr + result.stdout


def test_it_refuses_to_start_in_production_without_a_secret_key() -> None:
    env = _production_env()
    env.pop("SECRET_KEY")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def _settings_env_names() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("inventiv/*.py"), *ROOT.glob("apps/**/*.py")]:
        names.update(
            re.findall(
                r'env_(?:str|bool|int|float|list|required|choice|url)\(\s*"([A-Z0-9_]+)"',
                path.read_text(),
            )
        )
    return names


def test_every_setting_read_from_the_environment_is_documented() -> None:
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    missing = _settings_env_names() - documented
    assert not missing, f"undocumented in .env.example: {sorted(missing)}"


def test_the_compose_file_runs_only_what_exists_with_known_settings() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "gateway", "worker", "beat", "flower"} <= set(
        services
    )
    # and prometheus_client's own (inventiv/metrics.py: the multiprocess samples' directory)
    known_env = _settings_env_names() | {"DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}
    for name in ("migrate", "web", "gateway", "worker", "beat", "flower"):
        service = services[name]
        command = service["command"]
        if command[:2] == ["sh", "-c"]:  # a guard or several steps; the last one is exec'd
            command = shlex.split(command[2].split("; exec ")[-1].split(" && ")[0])
        if command[:3] == ["python", "-m", "apps.gateway"]:
            command = ["uvicorn", "apps.gateway.asgi:application"]
        if command[0] == "uvicorn":
            module, _, attr = command[1].partition(":")
            code = (
                "import os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'inventiv.settings'); "
                f"import {module} as m; assert hasattr(m, '{attr}')"
            )
            result = subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ},
            )
            assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        elif command[0] == "celery":
            assert command[1:3] == ["-A", "inventiv"]
            assert command[3] in {"worker", "beat", "flower"}
        elif command[:2] == ["python", "manage.py"]:
            assert command[2] == "migrate"
        else:
            pytest.fail(f"{name}: unknown command {command}")
        for var in service.get("environment", {}):
            assert var in known_env, f"{name}: {var} is not a setting"
        if name not in ("migrate", "beat", "flower"):
            assert "healthcheck" in service, name
        assert service.get("restart") in ("unless-stopped", "no"), name
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    assert (ROOT / "Dockerfile").exists()


def test_the_ci_entry_point_calls_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_the_embedded_default_uses_sqlite_in_wal_mode(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "INVENTIV_TEST_DB_NAME")
    }
    env["INVENTIV_STATE_DIR"] = str(tmp_path)
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "from django.db import connection as c; cur = c.cursor(); "
        "cur.execute('PRAGMA journal_mode'); "
        "print(s.EMBEDDED, s.CELERY_BROKER_URL, cur.fetchone()[0], "
        "s.CHANNEL_LAYERS['default']['BACKEND'].rsplit('.', 1)[1])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "DJANGO_SETTINGS_MODULE": "inventiv.settings"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "memory://", "wal", "ThreadSafeInMemoryChannelLayer"]
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
