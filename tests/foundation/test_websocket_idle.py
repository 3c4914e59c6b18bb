"""A WebSocket left idle longer than the Redis layer's blocking read stays open."""

from __future__ import annotations

import time

import pytest

from apps.accounts.services import user_create
from tests.live import csrf_headers, login, receive_until, websocket
from tests.processes import ProcessGroup

pytestmark = pytest.mark.slow


def test_an_idle_websocket_still_receives_events(processes: ProcessGroup) -> None:
    # Given a subscribed WebSocket on the Redis channel layer
    user_create(email="ops@example.com", password="correct-horse-9", is_staff=True)
    _, base_url = processes.web()
    processes.worker()
    client = login(base_url, "ops@example.com", "correct-horse-9")
    with websocket(base_url, client) as ws:
        receive_until(ws, "EVENT:SUBSCRIBED")
        # When nothing happens for longer than the layer's 5 s blocking read
        time.sleep(7)
        # Then an event still arrives
        client.post("/api/v1/ops/ping/", headers=csrf_headers(client, base_url))
        assert receive_until(ws, "EVENT:PONG", timeout=10)["event"] == "EVENT:PONG"
