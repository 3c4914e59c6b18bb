from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from apps.accounts.models import Organization, User
from apps.accounts.services import user_create
from tests.processes import ProcessGroup


@pytest.fixture
def owner(db: Any) -> User:
    """Olivia owns her personal organization."""
    return user_create(email="olivia@example.com", password="correct-horse-9")


@pytest.fixture
def stranger(db: Any) -> User:
    """Sam belongs to another organization and must never see Olivia's resources."""
    return user_create(email="sam@example.com", password="correct-horse-9")


@pytest.fixture
def staff(db: Any) -> User:
    return user_create(email="operator@example.com", password="correct-horse-9", is_staff=True)


@pytest.fixture
def owner_org(owner: User) -> Organization:
    return Organization.objects.get(memberships__user=owner, personal=True)


@pytest.fixture
def api(owner: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def stranger_api(stranger: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(stranger)
    return client


def subprocess_env() -> dict[str, str]:
    """The environment for platform subprocesses: same settings, the test database."""
    env = dict(os.environ)
    db = connection.settings_dict
    if settings.DATABASE_URL:
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    env.pop("INVENTIV_TEST_DB_NAME", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def processes(transactional_db: Any, tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(subprocess_env(), tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(autouse=True)
def _clean_redis_prefix() -> Iterator[None]:
    """Remove this run's Redis keys after each test (they all carry the run's prefix)."""
    yield
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(match=settings.REDIS_PREFIX + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
