"""A Celery task round trip and a WebSocket round trip, through real processes: on Redis +
PostgreSQL (web and worker as separate processes) and in the embedded mode (one process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from websockets.exceptions import InvalidStatus

from apps.accounts.services import user_create
from tests.live import csrf_headers, login, receive_until, websocket
from tests.processes import ROOT, ProcessGroup, embedded_env, free_port

pytestmark = pytest.mark.slow


def _ping_pong(base_url: str, email: str, password: str) -> dict[str, Any]:
    client = login(base_url, email, password)
    with websocket(base_url, client) as ws:
        subscribed = receive_until(ws, "EVENT:SUBSCRIBED")
        assert "staff" in subscribed["data"]["groups"]
        response = client.post("/api/v1/ops/ping/", headers=csrf_headers(client, base_url))
        assert response.status_code == 202, response.text
        pong = receive_until(ws, "EVENT:PONG", timeout=15)
    assert pong["data"]["ping_id"] == response.json()["ping_id"]
    return pong


def test_it_round_trips_a_task_and_a_websocket_message_on_redis_and_postgres(
    processes: ProcessGroup,
) -> None:
    # Given a staff user, the web process and a worker process on PostgreSQL + Redis
    assert settings.DATABASE_URL and settings.REDIS_URL
    user_create(email="ops@example.com", password="correct-horse-9", is_staff=True)
    _, base_url = processes.web()
    processes.worker()
    # When the user pings, then the worker's pong reaches the user's WebSocket
    pong = _ping_pong(base_url, "ops@example.com", "correct-horse-9")
    assert pong["data"]["worker_at"] >= pong["data"]["sent_at"]


def test_it_round_trips_a_task_and_a_websocket_message_in_the_embedded_mode(
    tmp_path: Path, processes: ProcessGroup
) -> None:
    # Given the embedded platform (no DATABASE_URL, no REDIS_URL) in a fresh state directory
    env = embedded_env(tmp_path / "state")
    manage = [sys.executable, "manage.py"]
    subprocess.run(
        [
            *manage,
            "shell",
            "-c",
            "from apps.accounts.services import user_create; "
            "user_create(email='ops@example.com', password='correct-horse-9', is_staff=True)",
        ],
        cwd=ROOT,
        env=env,
        check=True,
    )
    port = free_port()
    processes.env = env
    proc = processes.start("embedded", [*manage, "run_embedded", "--port", str(port)])
    base_url = f"http://127.0.0.1:{port}"
    processes.wait_http(proc, base_url + "/healthz")
    # When the user pings, then the in-process worker's pong reaches the WebSocket
    _ping_pong(base_url, "ops@example.com", "correct-horse-9")
    assert not (tmp_path / "state" / "db.sqlite3-journal").exists()
    assert (tmp_path / "state" / "db.sqlite3").exists()


def test_it_refuses_an_anonymous_websocket(processes: ProcessGroup) -> None:
    _, base_url = processes.web()
    import httpx

    with (
        pytest.raises((InvalidStatus, Exception)) as excinfo,
        websocket(base_url, httpx.Client()) as ws,
    ):
        ws.recv(timeout=5)
    assert "4401" in str(excinfo.value) or "403" in str(excinfo.value)


def test_instance_events_reach_only_the_organizations_members(processes: ProcessGroup) -> None:
    # Given Olivia and Sam, each in their own organization, both watching /ws/events/
    from apps.accounts.models import Organization
    from apps.instances.choices import InstanceStatus
    from apps.instances.models import Provider
    from apps.instances.services import instance_transition
    from apps.models.services import model_create
    from tests.instances.factories import make_instance

    olivia = user_create(email="olivia@example.com", password="correct-horse-9")
    user_create(email="sam@example.com", password="correct-horse-9")
    Provider.objects.create(name="local", kind="local")
    org = Organization.objects.get(memberships__user=olivia)
    model = model_create(organization=org, name="bot", engine="mock", model_id="m", gpu_count=0)
    instance, _ = make_instance(model, InstanceStatus.BOOTING)
    _, base_url = processes.web()
    with (
        websocket(base_url, login(base_url, "olivia@example.com", "correct-horse-9")) as mine,
        websocket(base_url, login(base_url, "sam@example.com", "correct-horse-9")) as theirs,
    ):
        receive_until(mine, "EVENT:SUBSCRIBED")
        receive_until(theirs, "EVENT:SUBSCRIBED")
        # When Olivia's instance changes status
        instance_transition(instance=instance, to=InstanceStatus.STARTING, reason="registered")
        # Then Olivia sees it, and Sam sees nothing
        event = receive_until(mine, "EVENT:INSTANCE_STARTING")
        assert event["data"]["instance_id"] == str(instance.id)
        with pytest.raises(TimeoutError):
            theirs.recv(timeout=1.5)


def test_someone_removed_from_an_organization_stops_receiving_its_events(
    processes: ProcessGroup,
) -> None:
    # Given Sam, a member of Olivia's organization, watching its events
    from apps.accounts.models import Membership, Organization
    from apps.instances.choices import InstanceStatus
    from apps.instances.models import Provider
    from apps.instances.services import instance_transition
    from apps.models.services import model_create
    from tests.instances.factories import make_instance

    olivia = user_create(email="olivia@example.com", password="correct-horse-9")
    sam = user_create(email="sam@example.com", password="correct-horse-9")
    org = Organization.objects.get(memberships__user=olivia)
    Membership.objects.create(user=sam, organization=org, role="member")
    Provider.objects.create(name="local", kind="local")
    model = model_create(organization=org, name="bot", engine="mock", model_id="m", gpu_count=0)
    first, _ = make_instance(model, InstanceStatus.BOOTING)
    second, _ = make_instance(model, InstanceStatus.BOOTING)
    _, base_url = processes.web(INVENTIV_WS_MEMBERSHIP_RECHECK_S="0")
    with websocket(base_url, login(base_url, "sam@example.com", "correct-horse-9")) as ws:
        receive_until(ws, "EVENT:SUBSCRIBED")
        instance_transition(instance=first, to=InstanceStatus.STARTING, reason="registered")
        assert receive_until(ws, "EVENT:INSTANCE_STARTING")["data"]["instance_id"] == str(first.id)
        # When Sam is removed from the organization
        Membership.objects.filter(user=sam, organization=org).delete()
        instance_transition(instance=second, to=InstanceStatus.STARTING, reason="registered")
        # Then the next event does not reach him
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.5)
