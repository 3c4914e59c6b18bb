"""/ws/events/ never gives a user another organization's events (issue 11): a real web process
(uvicorn, Channels over Redis), real sessions signed in through the login form, events
published by the services in this process and received on real WebSockets.

Removal from an organization: the consumer re-checks membership at most every
``INVENTIV_WS_MEMBERSHIP_RECHECK_S`` (default 30 s) while events flow, so an open socket stops
receiving the organization's events on the first event after that interval (tested here with
1 s); a new connection never joins the organization's group (at once).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from websockets.sync.client import ClientConnection

from apps.accounts.models import Membership, Organization, User
from apps.accounts.services import membership_remove, user_create
from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, Provider
from apps.instances.services import instance_transition
from apps.models.services import model_create
from inventiv.events import org_group, publish_now
from tests.instances.factories import make_instance
from tests.live import login, receive_until, websocket
from tests.processes import ProcessGroup

pytestmark = pytest.mark.slow

PASSWORD = "correct-horse-9"
RECHECK_S = 1.0


def _org_of(user: User) -> Organization:
    return Organization.objects.get(memberships__user=user, personal=True)


def _instances(org: Organization, name: str, count: int) -> list[Instance]:
    model = model_create(organization=org, name=name, engine="mock", model_id="m", gpu_count=0)
    return [make_instance(model, InstanceStatus.BOOTING)[0] for _ in range(count)]


def _drain(ws: ClientConnection, quiet_s: float) -> list[dict[str, Any]]:
    """Every message until none arrives for ``quiet_s`` seconds."""
    received = []
    while True:
        try:
            received.append(json.loads(ws.recv(timeout=quiet_s)))
        except TimeoutError:
            return received


@contextlib.contextmanager
def _open(base_url: str, email: str) -> Iterator[ClientConnection]:
    with websocket(base_url, login(base_url, email, PASSWORD)) as ws:
        receive_until(ws, "EVENT:SUBSCRIBED")
        yield ws


@pytest.fixture
def web(processes: ProcessGroup) -> str:
    Provider.objects.create(name="local", kind="local")
    _, base_url = processes.web(INVENTIV_WS_MEMBERSHIP_RECHECK_S=str(RECHECK_S))
    return base_url


def test_each_socket_receives_its_own_organizations_events_and_none_of_the_other(
    web: str,
) -> None:
    # Given Olivia and Sam, each in their own organization with instances, both watching
    olivia = user_create(email="olivia@example.com", password=PASSWORD)
    sam = user_create(email="sam@example.com", password=PASSWORD)
    hers = _instances(_org_of(olivia), "her-bot", 3)
    his = _instances(_org_of(sam), "his-bot", 3)
    with _open(web, olivia.email) as olivia_ws, _open(web, sam.email) as sam_ws:
        # When both organizations' instances change status, interleaved
        for mine, theirs in zip(hers, his, strict=True):
            instance_transition(instance=mine, to=InstanceStatus.STARTING, reason="registered")
            instance_transition(instance=theirs, to=InstanceStatus.STARTING, reason="registered")
        # ... and an event naming Sam's organization is misaddressed to Olivia's group
        publish_now(
            [org_group(_org_of(olivia).id)],
            "EVENT:INSTANCE_READY",
            cast(Any, {"organization_id": _org_of(sam).id, "instance_id": "misaddressed"}),
        )
        received = {"olivia": _drain(olivia_ws, 2.0), "sam": _drain(sam_ws, 2.0)}

    # Then each received exactly its own three events: all of them, none of the other's
    def instance_ids(messages: list[dict[str, Any]]) -> set[str]:
        return {m["data"]["instance_id"] for m in messages if m["event"].startswith("EVENT:INST")}

    assert instance_ids(received["olivia"]) == {str(i.id) for i in hers}
    assert instance_ids(received["sam"]) == {str(i.id) for i in his}
    for who, user in (("olivia", olivia), ("sam", sam)):
        assert {m["data"]["organization_id"] for m in received[who]} == {_org_of(user).id}


def test_a_removed_member_stops_receiving_after_the_recheck_and_at_once_on_reconnect(
    web: str,
) -> None:
    # Given Teo, a member of Olivia's organization, and Olivia, both watching its events
    olivia = user_create(email="olivia@example.com", password=PASSWORD)
    teo = user_create(email="teo@example.com", password=PASSWORD)
    org = _org_of(olivia)
    Membership.objects.create(user=teo, organization=org, role="member")
    first, second = _instances(org, "bot", 2)
    with _open(web, olivia.email) as olivia_ws, _open(web, teo.email) as teo_ws:
        instance_transition(instance=first, to=InstanceStatus.STARTING, reason="registered")
        for ws in (olivia_ws, teo_ws):
            event = receive_until(ws, "EVENT:INSTANCE_STARTING")
            assert event["data"]["instance_id"] == str(first.id)
        # When Olivia removes Teo (the service the members API calls), and the re-check
        # interval passes
        membership_remove(membership=Membership.objects.get(user=teo, organization=org), by=olivia)
        time.sleep(RECHECK_S + 0.2)
        instance_transition(instance=second, to=InstanceStatus.STARTING, reason="registered")
        # Then Olivia receives the next event (it was published) and Teo does not
        event = receive_until(olivia_ws, "EVENT:INSTANCE_STARTING")
        assert event["data"]["instance_id"] == str(second.id)
        assert _drain(teo_ws, 1.5) == []
    # ... and a new connection of Teo's does not join the organization's group at all
    with websocket(web, login(web, teo.email, PASSWORD)) as again:
        groups = receive_until(again, "EVENT:SUBSCRIBED")["data"]["groups"]
    assert org_group(org.id) not in groups
    assert org_group(_org_of(teo).id) in groups
