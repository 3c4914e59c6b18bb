from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from apps.instances.models import Provider
from apps.instances.providers.credentials import provider_set_credentials
from tests.providers import fake_scaleway
from tests.providers.fake_scaleway import FakeScaleway


@pytest.fixture(autouse=True)
def _fast_provider_polling(settings: Any) -> None:
    """Poll the fakes quickly; keep deadlines short so a bug fails fast instead of hanging."""
    settings.PROVIDER_POLL_INTERVAL_S = 0.01
    settings.PROVIDER_WAIT_RUNNING_S = 5
    settings.PROVIDER_WAIT_GONE_S = 5
    settings.PROVIDER_CALL_TIMEOUT_S = 5
    settings.DEPLOYMENT_NAME = "inventiv-test"


@pytest.fixture
def fake_scw() -> Iterator[FakeScaleway]:
    fake = FakeScaleway()
    fake.url = fake.start()  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def scw_provider(db: Any, fake_scw: FakeScaleway) -> Provider:
    provider = Provider.objects.create(
        name="scw",
        kind="scaleway",
        config={
            "project_id": fake_scaleway.PROJECT_ID,
            "zones": ["fr-par-2", "nl-ams-1"],
            "api_url": fake_scw.url,  # type: ignore[attr-defined]
        },
    )
    provider_set_credentials(
        provider=provider,
        credentials={
            "access_key": fake_scaleway.ACCESS_KEY,
            "secret_key": fake_scaleway.SECRET_KEY,
        },
    )
    return provider


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's in-memory AWS (no network). Credentials are moto's dummies."""
    from moto import mock_aws

    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    with mock_aws():
        yield


@pytest.fixture
def aws_provider(db: Any, aws: None) -> Provider:
    import boto3

    ami = boto3.client("ec2", region_name="eu-west-3").describe_images(Owners=["amazon"])["Images"][
        0
    ]["ImageId"]
    provider = Provider.objects.create(
        name="aws",
        kind="aws",
        config={
            "region": "eu-west-3",
            "zones": ["eu-west-3a", "eu-west-3b"],
            "ami": ami,
            "prices": {"g5.xlarge": "1.2"},
        },
    )
    provider_set_credentials(
        provider=provider,
        credentials={"access_key_id": "testing", "secret_access_key": "testing"},
    )
    return provider
