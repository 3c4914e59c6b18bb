"""The heartbeat's event-loop connections when the database is down: beats fail fast with the
envelope's 503 instead of each waiting for the open's whole timeout (issue 19). And the
look-up's prepared statements follow the settings."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from django.conf import settings

from apps.instances.agents.api.asgi import BeatDatabase, HeartbeatApp
from apps.models.models import LlmModel
from tests.fleet.conftest import in_thread
from tests.fleet.test_heartbeat_at_scale import _asgi, _body, _serving
from tests.processes import free_port


@pytest.mark.django_db(transaction=True)
async def test_beats_fail_fast_with_a_503_while_the_database_is_down(
    mock_model: LlmModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance, credential = await in_thread(_serving, mock_model)
    # Given the event loop's connections pointed at a port nothing listens on (the database
    # down), and the pool's timeout of 10 s
    dead = f"host=127.0.0.1 port={free_port()} dbname=x user=x connect_timeout=1"
    monkeypatch.setattr(BeatDatabase, "_conninfo", lambda self: dead)
    monkeypatch.setattr(settings, "DATABASE_POOL_TIMEOUT_S", 10.0)
    app = HeartbeatApp(None, db_connections=2)
    try:
        # When 50 beats arrive at once, then 50 more after the first ones failed
        started = time.monotonic()
        first = await asyncio.gather(*(_asgi(app, _body(instance), credential) for _ in range(50)))
        then = await asyncio.gather(*(_asgi(app, _body(instance), credential) for _ in range(50)))
        elapsed = time.monotonic() - started
        # Then each is a 503 in the envelope, none waited for the open's 10 s
        for status, body in [*first, *then]:
            assert status == 503
            error = json.loads(body)["error"]
            assert error["code"] == "database_unavailable" and error["type"] == "server_error"
        assert elapsed < 5.0
    finally:
        await app.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("options", "prepared", "expected"),
    [
        ({}, True, 0),  # prepared at its first use (the default)
        ({}, False, None),  # DATABASE_PREPARED_STATEMENTS=false: never
        ({"prepare_threshold": None}, True, None),  # OPTIONS win
        ({"prepare_threshold": 3}, False, 3),
    ],
)
async def test_the_look_up_prepares_as_the_settings_say(
    mock_model: LlmModel,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, object],
    prepared: bool,
    expected: int | None,
) -> None:
    instance, credential = await in_thread(_serving, mock_model)
    db_options = settings.DATABASES["default"].setdefault("OPTIONS", {})
    monkeypatch.delitem(db_options, "prepare_threshold", raising=False)
    for name, value in options.items():
        monkeypatch.setitem(db_options, name, value)
    monkeypatch.setattr(settings, "DATABASE_PREPARED_STATEMENTS", prepared)
    app = HeartbeatApp(None, db_connections=1)
    try:
        assert (await _asgi(app, _body(instance), credential))[0] == 200
        assert app.db is not None
        async with (await app.db._get_pool()).connection() as conn:
            # the connection that answered the beat, as the pool made it
            assert conn.prepare_threshold == expected
    finally:
        await app.close()
