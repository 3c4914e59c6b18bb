"""Bounded database connections (issue 19): one pool per process, whatever the threads; the
deploy check that compares the deployment's pools with the server's limit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from inventiv.checks import check_connection_budget
from inventiv.settings import _pool_plan

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not settings.DATABASE_URL, reason="PostgreSQL only")


def test_every_process_gets_a_bounded_pool_and_no_persistent_connections() -> None:
    db = settings.DATABASES["default"]
    assert db["CONN_MAX_AGE"] == 0
    assert db["OPTIONS"]["pool"]["max_size"] == settings.DATABASE_POOL_MAX_SIZE > 0


@pytest.mark.django_db(transaction=True)
def test_many_threads_never_open_more_connections_than_the_pool() -> None:
    # Given three times as many threads as the pool has connections, each holding one a while
    name = connection.settings_dict["NAME"]
    admin = os.environ["DATABASE_URL"]
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
                ).fetchone()
                seen.append(int(row[0]) if row else 0)
                time.sleep(0.02)

    def work() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(0.2)")
        finally:
            connection.close()  # back to the pool

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=work) for _ in range(3 * settings.DATABASE_POOL_MAX_SIZE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    sampler.join()
    # Then every thread got its turn, and the connections never passed the pool's size
    assert not any(t.is_alive() for t in threads)
    assert max(seen) <= settings.DATABASE_POOL_MAX_SIZE
    assert max(seen) >= 2  # they did run concurrently


@pytest.mark.django_db
def test_the_deploy_check_warns_when_the_pools_exceed_the_server(settings: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        limit = int(cursor.fetchone()[0])
    settings.DATABASE_POOL_PLAN = {"web": (limit, 8), "worker": (1, 2)}
    (warning,) = check_connection_budget(None)
    assert warning.id == "inventiv.W003"
    assert f"{limit * 8 + 2} connections" in warning.msg and "web " in warning.msg
    settings.DATABASE_POOL_PLAN = {"web": (2, 8), "worker": (1, 2)}
    assert check_connection_budget(None) == []
    settings.DATABASE_POOL_MAX_SIZE = 0
    (off,) = check_connection_budget(None)
    assert off.id == "inventiv.W004"


def test_the_plan_is_read_strictly() -> None:
    assert _pool_plan("web=2, gateway=2x4,") == {
        "web": (2, settings.DATABASE_POOL_MAX_SIZE),
        "gateway": (2, 4),
    }
    for bad in ("web", "web=x", "web=2y", "=3", "web=2x4x"):
        with pytest.raises(ImproperlyConfigured, match="DATABASE_POOL_PLAN"):
            _pool_plan(bad)


def test_a_persistent_connection_age_with_the_pool_is_refused_at_start() -> None:
    env = dict(os.environ, DATABASE_CONN_MAX_AGE="60", DJANGO_SETTINGS_MODULE="inventiv.settings")
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DATABASE_CONN_MAX_AGE must be 0" in result.stderr
