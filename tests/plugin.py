"""Loaded by pytest before Django's settings (``-p tests.plugin``): isolates this run.

Each run gets its own Redis key prefix, its own PostgreSQL test database name and its own
state directory, so concurrent runs on one machine never collide. Subprocesses started by the
tests inherit these variables.
"""

from __future__ import annotations

import os
import secrets
import tempfile

_run = f"{os.getpid()}_{secrets.token_hex(2)}"
os.environ.setdefault("INVENTIV_REDIS_PREFIX", f"test-{_run}:")
os.environ.setdefault("INVENTIV_TEST_DB_NAME", f"test_inventiv_{_run}")
os.environ.setdefault("INVENTIV_STATE_DIR", tempfile.mkdtemp(prefix=f"inventiv-test-{_run}-"))
# pytest-xdist workers inherit the controller's variables: each gets its own Redis prefix and
# state directory below them (pytest-django suffixes the test database name with the worker id).
_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    os.environ["INVENTIV_REDIS_PREFIX"] += f"{_worker}:"
    os.environ["INVENTIV_STATE_DIR"] = tempfile.mkdtemp(prefix=f"inventiv-test-{_run}-{_worker}-")
if os.environ.get("DATABASE_URL") or os.environ.get("REDIS_URL"):
    os.environ.setdefault("SECRET_KEY", "test-" + secrets.token_urlsafe(32))
os.environ.setdefault("INVENTIV_LOCAL_PROVIDER", "1")
# Tests speak plain HTTP on loopback; production's HTTPS-only defaults stay on elsewhere.
for _name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
    os.environ.setdefault(_name, "0")


def _drop_stale_test_databases() -> None:
    """Drop test databases left by earlier runs that were killed (their process is gone)."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        return
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'test_inventiv_%'"
                )
            ]
            for name in names:
                pid = name.removeprefix("test_inventiv_").split("_")[0]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass  # best effort: pytest-django reports a real connection problem clearly


_drop_stale_test_databases()
