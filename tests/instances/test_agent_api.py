"""The internal agent API: registration, heartbeats, and what is refused."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from agent import __version__
from agent.protocol import AgentState, Heartbeat, RegisterRequest
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance
from apps.instances.services import instance_request_termination, instance_transition
from apps.models.models import LlmModel
from tests.instances.factories import make_instance

pytestmark = pytest.mark.django_db


def register(client: Client, token: str, agent_version: str = __version__) -> Any:
    body = RegisterRequest(bootstrap_token=token, agent_version=agent_version, hostname="gpu-1")
    return client.post(
        "/internal/agent/v1/register", body.model_dump_json(), content_type="application/json"
    )


def heartbeat(
    client: Client,
    credential: str,
    instance_id: str,
    state: AgentState,
    *,
    agent_version: str = __version__,
    **engine: Any,
) -> Any:
    body = Heartbeat(
        instance_id=instance_id,
        state=state,
        agent_version=agent_version,
        engine={"healthy": True, **engine},  # type: ignore[arg-type]
    )
    return client.post(
        "/internal/agent/v1/heartbeat",
        body.model_dump_json(),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {credential}",
    )


def test_an_agent_registers_once_and_serves_its_model(client: Client, mock_model: LlmModel) -> None:
    instance, token = make_instance(mock_model, S.BOOTING)
    response = register(client, token)
    assert response.status_code == 200
    body = response.json()
    assert body["instance_id"] == str(instance.id)
    assert body["desired"]["action"] == "serve"
    engine = body["desired"]["engine"]
    assert (engine["engine"], engine["served_model_name"], engine["api_key"]) == (
        "mock",
        "sales-bot",
        "s",
    )
    instance.refresh_from_db()
    assert instance.status == S.STARTING
    assert instance.bootstrap_token_encrypted == ""
    # The same token again is refused, with the one message for every bad token
    again = register(client, token)
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "invalid_agent_credentials"


def test_an_agent_registering_before_the_create_call_returned_is_accepted(
    client: Client, mock_model: LlmModel
) -> None:
    instance, token = make_instance(mock_model, S.PROVISIONING)
    assert register(client, token).status_code == 200
    assert [e.to_status for e in Instance.objects.get(id=instance.id).events.all()] == [
        S.BOOTING,
        S.STARTING,
    ]


@pytest.mark.parametrize("case", ["wrong", "expired", "terminated"])
def test_it_refuses_bad_bootstrap_tokens(client: Client, mock_model: LlmModel, case: str) -> None:
    instance, token = make_instance(mock_model, S.BOOTING)
    if case == "wrong":
        token = "ivb_not-a-token"
    elif case == "expired":
        Instance.objects.filter(id=instance.id).update(
            bootstrap_expires_at=timezone.now() - timedelta(seconds=1)
        )
    else:
        Instance.objects.filter(id=instance.id).update(status=S.TERMINATED)
    response = register(client, token)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == (
        "Invalid, expired or already used bootstrap token."
    )
    assert Instance.objects.get(id=instance.id).credential_hash == ""


def test_heartbeats_move_the_instance_with_its_engine(client: Client, mock_model: LlmModel) -> None:
    instance, token = make_instance(mock_model, S.BOOTING)
    credential = register(client, token).json()["credential"]
    iid = str(instance.id)
    assert heartbeat(client, credential, iid, AgentState.READY).status_code == 200
    assert Instance.objects.get(id=iid).status == S.READY
    mock_model.refresh_from_db()
    assert mock_model.status == "draft"  # not deployed: readiness does not deploy it
    down = heartbeat(
        client, credential, iid, AgentState.ENGINE_DOWN, last_error="crashed", restarts=1
    )
    assert down.json()["desired"]["action"] == "serve"
    instance.refresh_from_db()
    assert instance.status == S.STARTING
    assert "crashed" in instance.status_reason
    heartbeat(client, credential, iid, AgentState.READY)
    Instance.objects.filter(id=iid).update(status=S.DRAINING)
    assert (
        heartbeat(client, credential, iid, AgentState.DRAINING).json()["desired"]["action"]
        == "drain"
    )
    heartbeat(client, credential, iid, AgentState.DRAINED)
    assert Instance.objects.get(id=iid).status == S.TERMINATING


def test_a_heartbeat_for_another_instance_is_refused(client: Client, mock_model: LlmModel) -> None:
    _first, token = make_instance(mock_model, S.BOOTING)
    other, _ = make_instance(mock_model, S.BOOTING)
    credential = register(client, token).json()["credential"]
    response = heartbeat(client, credential, str(other.id), AgentState.READY)
    assert response.status_code == 401
    assert Instance.objects.get(id=other.id).last_heartbeat_at is None


def test_a_terminated_instance_credential_is_refused(client: Client, mock_model: LlmModel) -> None:
    instance, token = make_instance(mock_model, S.BOOTING)
    credential = register(client, token).json()["credential"]
    assert instance_request_termination(instance=instance, reason="scaled down")
    assert instance_transition(instance=instance, to=S.TERMINATED, reason="machine released")
    assert Instance.objects.get(id=instance.id).credential_hash == ""
    assert heartbeat(client, credential, str(instance.id), AgentState.READY).status_code == 401


def test_user_credentials_never_reach_the_agent_api(
    client: Client, owner: Any, mock_model: LlmModel
) -> None:
    instance, _ = make_instance(mock_model, S.STARTING)
    client.force_login(owner)
    body = Heartbeat(instance_id=str(instance.id), state=AgentState.READY).model_dump_json()
    response = client.post("/internal/agent/v1/heartbeat", body, content_type="application/json")
    assert response.status_code == 401
    basic = client.post(
        "/internal/agent/v1/heartbeat",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION="Basic b2xpdmlhQGV4YW1wbGUuY29tOmNvcnJlY3QtaG9yc2UtOQ==",
    )
    assert basic.status_code == 401


def test_malformed_agent_messages_get_a_clear_400(client: Client, mock_model: LlmModel) -> None:
    response = client.post(
        "/internal/agent/v1/register", b"{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    _, token = make_instance(mock_model, S.BOOTING)
    old = client.post(
        "/internal/agent/v1/register",
        {"bootstrap_token": token, "agent_version": "1", "hostname": "h", "protocol_version": 99},
        content_type="application/json",
    )
    assert old.status_code == 400
    assert old.json()["error"]["code"] == "unsupported_protocol"


def test_it_records_the_agent_version_and_shows_it_in_the_api(
    client: Client, api: Any, mock_model: LlmModel
) -> None:
    # given an agent of this release registered and heartbeating
    instance, token = make_instance(mock_model, S.BOOTING)
    credential = register(client, token).json()["credential"]
    assert heartbeat(client, credential, str(instance.id), AgentState.READY).status_code == 200
    # then its version is on the instance, in the registration's history row and in the API
    instance.refresh_from_db()
    assert instance.agent_version == __version__
    (registered,) = instance.events.filter(to_status=S.STARTING)
    assert registered.data["agent_version"] == registered.data["control_plane_version"]
    assert "warning" not in registered.reason
    body = api.get(f"/api/v1/instances/{instance.id}/").json()
    assert (body["agent_version"], body["agent_version_mismatch"]) == (__version__, False)
    listed = api.get("/api/v1/instances/").json()["results"]
    assert [(i["agent_version"], i["agent_version_mismatch"]) for i in listed] == [
        (__version__, False)
    ]


def test_it_serves_an_agent_of_another_release_with_a_warning(
    client: Client, api: Any, mock_model: LlmModel, caplog: pytest.LogCaptureFixture
) -> None:
    # given an agent of an older release (same protocol version)
    instance, token = make_instance(mock_model, S.BOOTING)
    iid = str(instance.id)
    # when it registers, then it is accepted, with a warning logged and in the history
    response = register(client, token, agent_version="0.0.9")
    assert response.status_code == 200
    assert f"agent version 0.0.9 differs from the control plane's {__version__}" in caplog.text
    (registered,) = Instance.objects.get(id=iid).events.filter(to_status=S.STARTING)
    assert f"warning: agent 0.0.9 differs from the control plane's {__version__}" in (
        registered.reason
    )
    credential = response.json()["credential"]
    # and its heartbeats are served; the API flags the mismatch
    assert (
        heartbeat(client, credential, iid, AgentState.READY, agent_version="0.0.9").status_code
        == 200
    )
    assert Instance.objects.get(id=iid).status == S.READY
    body = api.get(f"/api/v1/instances/{iid}/").json()
    assert (body["agent_version"], body["agent_version_mismatch"]) == ("0.0.9", True)
    # when the agent is upgraded in place, then its next heartbeat records the new release
    assert heartbeat(client, credential, iid, AgentState.READY).status_code == 200
    assert Instance.objects.get(id=iid).agent_version == __version__
    assert api.get(f"/api/v1/instances/{iid}/").json()["agent_version_mismatch"] is False


def test_a_heartbeat_without_agent_version_still_parses_and_keeps_the_recorded_one(
    client: Client, mock_model: LlmModel
) -> None:
    # given an agent registered with this release
    instance, token = make_instance(mock_model, S.BOOTING)
    credential = register(client, token).json()["credential"]
    # when a heartbeat comes in the shape of an agent older than the field
    old = {"protocol_version": 1, "instance_id": str(instance.id), "state": "ready"}
    response = client.post(
        "/internal/agent/v1/heartbeat",
        old,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {credential}",
    )
    # then it is served and the version given at registration is kept
    assert response.status_code == 200
    instance.refresh_from_db()
    assert (instance.status, instance.agent_version) == (S.READY, __version__)
