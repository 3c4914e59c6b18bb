"""Gateway fixtures: real mock-engine subprocesses registered as ready instances, real gateway
subprocesses (``python -m apps.gateway``), keys made by the service, the official SDK as client.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.utils import timezone
from openai import OpenAI

from apps.accounts.models import Organization
from apps.billing.models import UsageRecord
from apps.billing.services import usage_flush
from apps.gateway.models import ApiKey
from apps.gateway.services import api_key_create
from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, Provider
from apps.models.choices import Engine, ModelStatus
from apps.models.models import LlmModel
from inventiv.crypto import encrypt
from tests.processes import PYTHON, ManagedProcess, ProcessGroup, free_port, wait_for


@dataclass
class EngineHandle:
    proc: ManagedProcess
    url: str
    secret: str
    instance: Instance

    def control(self, **faults: Any) -> dict[str, Any]:
        auth = {"Authorization": f"Bearer {self.secret}"}
        return httpx.post(f"{self.url}/mock/control", json=faults, headers=auth).json()

    def generated(self) -> tuple[int, int]:
        """(prompt tokens, generation tokens) the engine counted, from its /metrics."""
        text = httpx.get(f"{self.url}/metrics").text
        values = {}
        for line in text.splitlines():
            for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
                if line.startswith(name + "{"):
                    values[name] = int(float(line.rsplit(" ", 1)[1]))
        return values["vllm:prompt_tokens_total"], values["vllm:generation_tokens_total"]


@dataclass
class GatewayHandle:
    proc: ManagedProcess
    url: str

    def client(self, key: str, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kwargs)


def make_model_code(organization: Organization, name: str = "sales-bot", **extra: Any) -> LlmModel:
    return LlmModel.objects.create(
        organization=organization,
        name=name,
        engine=Engine.MOCK,
        model_id=f"mock/{name}",
        status=ModelStatus.ACTIVE,
        **extra,
    )


@pytest.fixture
def model_code(owner_org: Organization) -> LlmModel:
    return make_model_code(owner_org)


@pytest.fixture
def start_engine(processes: ProcessGroup) -> Callable[..., EngineHandle]:
    """Start a mock engine and register it as a ready instance of ``model``."""
    provider, _ = Provider.objects.get_or_create(name="local-test", defaults={"kind": "local"})
    count = 0

    def start(model: LlmModel, *, token_rate: float = 0.0, max_tokens: int = 8) -> EngineHandle:
        nonlocal count
        count += 1
        port = free_port()
        secret = secrets.token_urlsafe(24)
        proc = processes.start(
            f"engine-{model.name}-{count}",
            [
                PYTHON,
                "-m",
                "agent.mock_engine",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--served-model-name",
                model.name,
                "--model-id",
                model.model_id,
                "--token-rate",
                str(token_rate),
                "--default-max-tokens",
                str(max_tokens),
            ],
            MOCK_ENGINE_API_KEY=secret,
        )
        url = f"http://127.0.0.1:{port}"
        processes.wait_http(proc, url + "/health")
        now = timezone.now()
        instance = Instance.objects.create(
            organization=model.organization,
            llm_model=model,
            provider=provider,
            status=InstanceStatus.READY,
            status_changed_at=now,
            ready_at=now,
            engine_host="127.0.0.1",
            engine_port=port,
            engine_secret_encrypted=encrypt(secret),
        )
        return EngineHandle(proc, url, secret, instance)

    return start


@pytest.fixture
def start_gateway(processes: ProcessGroup) -> Callable[..., GatewayHandle]:
    count = 0

    def start(**env: str) -> GatewayHandle:
        nonlocal count
        count += 1
        port = free_port()
        proc = processes.start(
            f"gateway-{count}",
            [PYTHON, "-m", "apps.gateway", "--host", "127.0.0.1", "--port", str(port)],
            **env,
        )
        url = f"http://127.0.0.1:{port}"
        processes.wait_http(proc, url + "/healthz")
        return GatewayHandle(proc, url)

    return start


@pytest.fixture
def new_key(owner_org: Organization) -> Callable[..., tuple[ApiKey, str]]:
    def create(**values: Any) -> tuple[ApiKey, str]:
        return api_key_create(organization=owner_org, name=values.pop("name", "test"), **values)

    return create


def flushed_usage(expected: int, timeout: float = 10.0) -> list[UsageRecord]:
    """Flush the usage buffer until ``expected`` records are in the database."""

    def ready() -> list[UsageRecord] | None:
        usage_flush()
        records = list(UsageRecord.objects.order_by("started_at"))
        return records if len(records) >= expected else None

    records: list[UsageRecord] = wait_for(ready, timeout=timeout, message=f"{expected} records")
    return records
