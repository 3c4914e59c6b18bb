"""TGI launches as the agent builds them from what the control plane sends: shards from the
machine the instance landed on, the context as TGI's token budgets, precision and quantization
validated against what text-generation-launcher accepts, the secrets in the environment only."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from agent.engines import build_command
from agent.protocol import EngineSpec
from apps.accounts.models import Organization
from apps.gateway.capabilities import serves
from apps.instances.agents.services import engine_spec_for
from apps.instances.choices import InstanceStatus, ProviderKind
from apps.instances.models import InstanceType, Provider
from apps.models.models import LlmModel
from apps.models.services import model_create, model_update
from inventiv.errors import ApplicationError
from tests.instances.factories import make_instance

pytestmark = pytest.mark.django_db


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.fixture
def scw(db: Any) -> Provider:
    return Provider.objects.create(name="scw", kind=ProviderKind.SCALEWAY)


def _machine(provider: Provider, gpus: int) -> InstanceType:
    return InstanceType.objects.create(
        provider=provider, code=f"H100-{gpus}-80G", gpu_count=gpus, vram_per_gpu_gb=80
    )


def _tgi_model(org: Organization, provider: Provider, **fields: Any) -> LlmModel:
    values: dict[str, Any] = {
        "engine": "tgi",
        "model_id": "meta-llama/Llama-3.1-70B-Instruct",
        "parameter_count_b": Decimal("70"),
        "gpu_count": 1,
        "provider": provider,
    }
    values.update(fields)
    return model_create(organization=org, name="tgi-bot", **values)


def test_it_shards_an_estimated_model_over_every_gpu_with_tgis_own_flags(
    owner_org: Organization, scw: Provider
) -> None:
    # given a 70B TGI model whose needs were estimated, on a 4-GPU machine
    model = _tgi_model(owner_org, scw, max_model_len=8192)
    instance, _ = make_instance(model, InstanceStatus.STARTING, instance_type=_machine(scw, 4))
    # when the agent builds the command line from the spec
    spec = engine_spec_for(instance)
    command = build_command(spec)
    argv = command.argv
    # then it is text-generation-launcher with TGI's flag names
    assert argv[:3] == ["text-generation-launcher", "--model-id", model.model_id]
    assert _flag(argv, "--num-shard") == "4"
    assert "--tensor-parallel-size" not in argv and "--served-model-name" not in argv
    assert _flag(argv, "--max-total-tokens") == "8192"
    assert _flag(argv, "--max-input-tokens") == "8191"
    assert _flag(argv, "--port") == str(instance.engine_port)
    assert _flag(argv, "--usage-stats") == "off"
    # and the engine secret is TGI's API_KEY, in the environment only
    assert command.env["API_KEY"] == spec.api_key
    assert "--api-key" not in argv and spec.api_key not in argv
    # and, on a cloud machine, behind the agent's front (the agent binds it to loopback)
    assert spec.sealed


def test_it_keeps_a_smaller_max_input_tokens_and_refuses_one_too_large(
    owner_org: Organization, scw: Provider
) -> None:
    model = _tgi_model(owner_org, scw, max_model_len=4096, engine_args={"max_input_tokens": 3000})
    instance, _ = make_instance(model, InstanceStatus.STARTING, instance_type=_machine(scw, 1))
    argv = build_command(engine_spec_for(instance)).argv
    assert (_flag(argv, "--max-input-tokens"), _flag(argv, "--max-total-tokens")) == (
        "3000",
        "4096",
    )
    model_update(model=model, engine_args={"max_input_tokens": 4096})
    instance.llm_model.refresh_from_db()
    with pytest.raises(ValueError, match=re.escape("engine_args.max_input_tokens")):
        build_command(engine_spec_for(instance))


def test_it_passes_tgis_precision_or_quantization(owner_org: Organization, scw: Provider) -> None:
    model = _tgi_model(owner_org, scw, dtype="bfloat16")
    instance, _ = make_instance(model, InstanceStatus.STARTING, instance_type=_machine(scw, 1))
    argv = build_command(engine_spec_for(instance)).argv
    assert _flag(argv, "--dtype") == "bfloat16" and "--quantize" not in argv
    model_update(model=model, dtype="auto", quantization="bitsandbytes-nf4")
    instance.llm_model.refresh_from_db()
    argv = build_command(engine_spec_for(instance)).argv
    assert _flag(argv, "--quantize") == "bitsandbytes-nf4" and "--dtype" not in argv


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"dtype": "float32"}, "dtype"),  # vLLM's, not TGI's
        ({"quantization": "awq_marlin"}, "quantization"),  # vLLM's method name
        ({"quantization": "eetq", "dtype": "float16"}, "dtype"),  # TGI refuses both
        ({"engine_args": {"gpu_memory_utilization": 0.9}}, "engine_args.gpu_memory_utilization"),
        ({"engine_args": {"kv_cache_dtype": "fp8"}}, "engine_args.kv_cache_dtype"),
        ({"gpu_count": 0}, "gpu_count"),
    ],
)
def test_it_refuses_what_text_generation_launcher_does_not_accept(
    owner_org: Organization, scw: Provider, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(ApplicationError) as refused:
        _tgi_model(owner_org, scw, **fields)
    assert refused.value.param == param
    assert not LlmModel.objects.filter(name="tgi-bot").exists()


def test_tgi_gets_the_hub_token_in_its_environment_and_none_of_the_agents() -> None:
    spec = EngineSpec(
        engine="tgi",
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        served_model_name="bot",
        api_key="sk-engine-secret",
        hf_token="hf_gatedSECRET123",
        port=8001,
    )
    command = build_command(
        spec,
        base_env={"PATH": "/usr/bin", "HF_API_TOKEN": "hf_machine", "API_KEY": "the-agents"},
    )
    assert command.env["HF_TOKEN"] == "hf_gatedSECRET123"
    assert command.env["API_KEY"] == "sk-engine-secret"
    assert "HF_API_TOKEN" not in command.env
    assert "hf_gatedSECRET123" not in " ".join(command.argv)


def test_the_gateway_sends_tgi_only_what_it_serves() -> None:
    assert serves("tgi", "chat") and serves("tgi", "completions")
    assert not serves("tgi", "embeddings") and not serves("tgi", "rerank")
