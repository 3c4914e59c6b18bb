"""Which engines are sealed, through the real agent API: the desired state seals cloud and
on-premise engines by default and the local provider's on request; the fingerprint an agent
reports becomes an https, pinned endpoint only where its engine is sealed."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from agent import __version__
from agent.protocol import Heartbeat, RegisterRequest
from apps.accounts.models import Organization
from apps.instances.choices import InstanceStatus, ProviderKind
from apps.instances.models import Instance, Provider
from apps.models.models import LlmModel
from apps.models.services import model_create
from tests.instances.factories import make_instance

pytestmark = pytest.mark.django_db
FINGERPRINT = "ab" * 32


def _register(client: Client, token: str, fingerprint: str = FINGERPRINT) -> Any:
    body = RegisterRequest(
        bootstrap_token=token,
        agent_version=__version__,
        hostname="m1",
        advertise_host="10.0.0.5",
        tls_fingerprint=fingerprint,
    )
    response = client.post(
        "/internal/agent/v1/register", body.model_dump_json(), content_type="application/json"
    )
    assert response.status_code == 200, response.json()
    return response.json()


def _model(org: Organization, provider: Provider) -> LlmModel:
    return model_create(
        organization=org,
        name=f"bot-{provider.kind}",
        engine="mock",
        model_id="org/tiny",
        gpu_count=0,
        provider=provider,
    )


@pytest.mark.parametrize(
    ("kind", "mode", "sealed"),
    [
        (ProviderKind.SCALEWAY, "auto", True),
        (ProviderKind.ONPREM, "auto", True),
        (ProviderKind.LOCAL, "auto", False),
        (ProviderKind.LOCAL, "on", True),
        (ProviderKind.AWS, "off", False),
    ],
)
def test_the_desired_state_and_the_endpoint_follow_the_sealed_setting(
    client: Client,
    owner_org: Organization,
    settings: Any,
    kind: str,
    mode: str,
    sealed: bool,
) -> None:
    settings.SEALED_DATA_PLANE = mode
    provider = Provider.objects.create(name=f"p-{kind}", kind=kind)
    instance, token = make_instance(_model(owner_org, provider), InstanceStatus.BOOTING)
    answer = _register(client, token)
    assert answer["desired"]["engine"]["sealed"] is sealed
    instance.refresh_from_db()
    assert instance.tls_fingerprint == (FINGERPRINT if sealed else "")
    assert instance.endpoint.startswith("https://" if sealed else "http://")


def test_a_new_certificate_in_a_heartbeat_is_pinned_and_a_malformed_one_refused(
    client: Client, owner_org: Organization
) -> None:
    provider = Provider.objects.create(name="scw", kind=ProviderKind.SCALEWAY)
    instance, token = make_instance(_model(owner_org, provider), InstanceStatus.BOOTING)
    credential = _register(client, token)["credential"]
    beat = Heartbeat(instance_id=str(instance.id), state="starting", tls_fingerprint="cd" * 32)
    response = client.post(
        "/internal/agent/v1/heartbeat",
        beat.model_dump_json(),
        content_type="application/json",
        headers={"Authorization": f"Bearer {credential}"},
    )
    assert response.status_code == 200
    assert Instance.objects.get(id=instance.id).tls_fingerprint == "cd" * 32
    malformed = beat.model_dump(mode="json") | {"tls_fingerprint": "not-hex"}
    response = client.post(
        "/internal/agent/v1/heartbeat",
        malformed,
        content_type="application/json",
        headers={"Authorization": f"Bearer {credential}"},
    )
    assert response.status_code == 400
    assert Instance.objects.get(id=instance.id).tls_fingerprint == "cd" * 32
