"""vLLM launches as the agent builds them from what the control plane sends: parallelism from
the machine the instance landed on, the model code's context, precision and quantization as
separate validated settings, the Hugging Face token in the environment and nowhere else."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from agent.engines import build_command
from agent.protocol import EngineSpec
from apps.accounts.models import Organization
from apps.instances.agents.services import engine_spec_for
from apps.instances.choices import InstanceStatus, ProviderKind
from apps.instances.models import InstanceType, OnPremAssignment, OnPremHost, Provider
from apps.models.models import LlmModel
from apps.models.services import model_create, model_update
from inventiv.errors import ApplicationError
from tests.instances.factories import make_instance

pytestmark = pytest.mark.django_db


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _vllm_model(org: Organization, provider: Provider | None = None, **fields: Any) -> LlmModel:
    values: dict[str, Any] = {
        "engine": "vllm",
        "model_id": "meta-llama/Llama-3.1-70B-Instruct",
        "parameter_count_b": Decimal("70"),
        "gpu_count": 1,
        "provider": provider,
    }
    values.update(fields)
    return model_create(organization=org, name="big-bot", **values)


@pytest.fixture
def scw(db: Any) -> Provider:
    return Provider.objects.create(name="scw", kind=ProviderKind.SCALEWAY)


def _machine(provider: Provider, gpus: int) -> InstanceType:
    return InstanceType.objects.create(
        provider=provider, code=f"H100-{gpus}-80G", gpu_count=gpus, vram_per_gpu_gb=80
    )


def test_it_shards_an_estimated_model_over_every_gpu_of_its_machine(
    owner_org: Organization, scw: Provider
) -> None:
    # given a 70B model whose needs were estimated (gpu_count 1) placed on a 4-GPU machine
    model = _vllm_model(owner_org, scw)
    instance, _ = make_instance(model, InstanceStatus.STARTING, instance_type=_machine(scw, 4))
    # when the agent builds its command line from the spec the control plane sends
    argv = build_command(engine_spec_for(instance)).argv
    # then vLLM shards over the four GPUs, not one
    assert _flag(argv, "--tensor-parallel-size") == "4"
    assert "--pipeline-parallel-size" not in argv


@pytest.mark.parametrize(
    ("gpus", "pipeline", "tensor"),
    [(8, 2, 4), (3, 1, 2), (6, 3, 2), (1, 1, 1)],
)
def test_it_splits_the_machine_between_pipeline_stages_and_tensor_shards(
    owner_org: Organization, scw: Provider, gpus: int, pipeline: int, tensor: int
) -> None:
    args = {"pipeline_parallel_size": pipeline} if pipeline > 1 else {}
    model = _vllm_model(owner_org, scw, engine_args=args, gpu_count=pipeline)
    instance, _ = make_instance(model, InstanceStatus.STARTING, instance_type=_machine(scw, gpus))
    argv = build_command(engine_spec_for(instance)).argv
    assert _flag(argv, "--tensor-parallel-size") == str(tensor)
    assert _flag(argv, "--pipeline-parallel-size") == (str(pipeline) if pipeline > 1 else None)


def test_it_keeps_an_explicit_tensor_parallel_size(owner_org: Organization, scw: Provider) -> None:
    model = _vllm_model(owner_org, scw, gpu_count=2, engine_args={"tensor_parallel_size": 2})
    instance, _ = make_instance(model, InstanceStatus.STARTING, instance_type=_machine(scw, 8))
    assert _flag(build_command(engine_spec_for(instance)).argv, "--tensor-parallel-size") == "2"


def test_it_shards_over_the_gpus_of_the_on_premise_assignment(owner_org: Organization) -> None:
    provider = Provider.objects.create(name="lab", kind=ProviderKind.ONPREM)
    host = OnPremHost.objects.create(provider=provider, name="gpu-box", gpus=[{}] * 4)
    model = _vllm_model(owner_org, provider)
    instance, _ = make_instance(model, InstanceStatus.STARTING)
    OnPremAssignment.objects.create(
        host=host, instance=instance, gpu_indices=[2, 3], engine_port=8002
    )
    assert _flag(build_command(engine_spec_for(instance)).argv, "--tensor-parallel-size") == "2"


def test_it_passes_the_model_codes_context_length(owner_org: Organization, scw: Provider) -> None:
    model = _vllm_model(owner_org, scw, max_model_len=32768)
    instance, _ = make_instance(model, InstanceStatus.STARTING, instance_type=_machine(scw, 2))
    assert _flag(build_command(engine_spec_for(instance)).argv, "--max-model-len") == "32768"
    # an engine argument, when given, is the more specific one
    model_update(model=model, engine_args={"max_model_len": 4096})
    instance.llm_model.refresh_from_db()
    assert _flag(build_command(engine_spec_for(instance)).argv, "--max-model-len") == "4096"


def test_it_passes_precision_and_quantization_as_separate_flags(
    owner_org: Organization, scw: Provider
) -> None:
    model = _vllm_model(owner_org, scw, dtype="bfloat16", quantization="awq")
    instance, _ = make_instance(model, InstanceStatus.STARTING, instance_type=_machine(scw, 1))
    argv = build_command(engine_spec_for(instance)).argv
    assert _flag(argv, "--dtype") == "bfloat16"
    assert _flag(argv, "--quantization") == "awq"
    # auto is vLLM's default and no quantization passes no flag (vLLM reads the checkpoint's)
    model_update(model=model, dtype="auto", quantization="")
    instance.llm_model.refresh_from_db()
    argv = build_command(engine_spec_for(instance)).argv
    assert "--dtype" not in argv and "--quantization" not in argv


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"dtype": "int4"}, "dtype"),
        ({"dtype": "half"}, "dtype"),
        ({"quantization": "int8"}, "quantization"),
        ({"quantization": "--api-key=x"}, "quantization"),
        ({"engine_args": {"dtype": "bfloat16"}}, "engine_args.dtype"),
        ({"engine_args": {"quantization": "awq"}}, "engine_args.quantization"),
    ],
)
def test_it_refuses_precision_or_quantization_vllm_does_not_accept(
    owner_org: Organization, scw: Provider, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(ApplicationError) as refused:
        _vllm_model(owner_org, scw, **fields)
    assert refused.value.param == param
    assert not LlmModel.objects.filter(name="big-bot").exists()


def test_it_sizes_a_quantized_model_smaller(owner_org: Organization, scw: Provider) -> None:
    from apps.instances.providers.sizing import needs_for_model

    plain = needs_for_model(_vllm_model(owner_org, scw))
    LlmModel.objects.all().delete()
    awq = needs_for_model(_vllm_model(owner_org, scw, quantization="awq"))
    assert plain.total_vram_gb and awq.total_vram_gb
    assert awq.total_vram_gb < plain.total_vram_gb / 2
    assert "awq" in awq.explanation


def _spec(**fields: Any) -> EngineSpec:
    values: dict[str, Any] = {
        "engine": "vllm",
        "model_id": "meta-llama/Llama-3.1-8B-Instruct",
        "served_model_name": "bot",
        "api_key": "sk-engine-secret",
        "port": 8001,
    }
    values.update(fields)
    return EngineSpec(**values)


def test_it_hands_the_hugging_face_token_to_the_engine_in_its_environment_only() -> None:
    spec = _spec(hf_token="hf_gatedSECRET123")
    command = build_command(spec, base_env={"PATH": "/usr/bin"})
    assert command.env["HF_TOKEN"] == "hf_gatedSECRET123"
    assert "hf_gatedSECRET123" not in " ".join(command.argv)
    assert "hf_gatedSECRET123" not in repr(spec) and "sk-engine-secret" not in repr(spec)


def test_it_never_passes_the_agents_own_hugging_face_token_on() -> None:
    command = build_command(
        _spec(), base_env={"HF_TOKEN": "hf_machine", "HUGGING_FACE_HUB_TOKEN": "hf_old"}
    )
    assert "HF_TOKEN" not in command.env and "HUGGING_FACE_HUB_TOKEN" not in command.env


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"dtype": "int4"}, "dtype:"), ({"quantization": "-x"}, "quantization:")],
)
def test_the_agent_validates_precision_again(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        build_command(_spec(**fields))
