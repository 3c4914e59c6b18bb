"""The engine-args allow-list and the engine command lines built from it."""

from __future__ import annotations

import re
import sys
from typing import get_args

import pytest

from agent.engine_args import ENGINE_ARGS, validate_engine_args
from agent.engines import build_command, probe_host
from agent.protocol import EngineSpec


def spec(engine: str = "vllm", **engine_args: object) -> EngineSpec:
    return EngineSpec(
        engine=engine,  # type: ignore[arg-type]
        model_id="meta-llama/Llama-3.1-8B-Instruct",
        served_model_name="llama-8b",
        engine_args=engine_args,
        api_key="sk-engine-secret",
        host="0.0.0.0",
        port=8001,
    )


def test_it_builds_the_vllm_command_with_the_key_in_the_environment() -> None:
    command = build_command(
        spec(
            tensor_parallel_size=2,
            max_model_len=8192,
            pipeline_parallel_size=2,
            gpu_memory_utilization=0.9,
            enable_prefix_caching=True,
            max_num_seqs=128,
            kv_cache_dtype="fp8",
            trust_remote_code=True,
            enforce_eager=False,
        ),
        base_env={"PATH": "/usr/bin", "INVENTIV_BOOTSTRAP_TOKEN": "boot"},
    )
    assert command.argv == [
        "vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name", "llama-8b", "--host", "0.0.0.0", "--port", "8001",
        "--enable-prefix-caching",
        "--gpu-memory-utilization", "0.9",
        "--kv-cache-dtype", "fp8",
        "--max-model-len", "8192",
        "--max-num-seqs", "128",
        "--pipeline-parallel-size", "2",
        "--tensor-parallel-size", "2",
        "--trust-remote-code",
    ]  # fmt: skip
    assert "sk-engine-secret" not in " ".join(command.argv)
    assert command.env["VLLM_API_KEY"] == "sk-engine-secret"
    assert "INVENTIV_BOOTSTRAP_TOKEN" not in command.env
    assert command.env["PATH"] == "/usr/bin"


def test_it_maps_a_false_prefix_caching_to_its_negative_flag() -> None:
    assert build_command(spec(enable_prefix_caching=False)).argv[-1] == "--no-enable-prefix-caching"


def test_it_builds_the_mock_command() -> None:
    command = build_command(spec("mock", token_rate=50, startup_delay_s=0.5, embedding_dim=4))
    assert command.argv[:3] == [sys.executable, "-m", "agent.mock_engine"]
    assert command.argv[3:] == [
        "--host", "0.0.0.0", "--port", "8001",
        "--served-model-name", "llama-8b", "--model-id", "meta-llama/Llama-3.1-8B-Instruct",
        "--embedding-dim", "4", "--startup-delay-s", "0.5", "--token-rate", "50.0",
    ]  # fmt: skip
    assert command.env["MOCK_ENGINE_API_KEY"] == "sk-engine-secret"


@pytest.mark.parametrize(
    ("engine", "args", "field"),
    [
        ("vllm", {"rm_rf": True}, "engine_args.rm_rf: unknown argument"),
        ("vllm", {"token_rate": 3.0}, "engine_args.token_rate: unknown argument"),
        ("vllm", {"tensor_parallel_size": 0}, "engine_args.tensor_parallel_size: must be >= 1"),
        ("vllm", {"tensor_parallel_size": True}, "engine_args.tensor_parallel_size: must be an"),
        ("vllm", {"max_model_len": "4096"}, "engine_args.max_model_len: must be an integer"),
        ("vllm", {"gpu_memory_utilization": 1.5}, "engine_args.gpu_memory_utilization: must be <="),
        (
            "vllm",
            {"gpu_memory_utilization": float("nan")},
            "gpu_memory_utilization: must be finite",
        ),
        # precision and quantization are settings of their own, not engine arguments
        ("vllm", {"dtype": "bfloat16"}, "engine_args.dtype: unknown argument"),
        ("vllm", {"quantization": "awq"}, "engine_args.quantization: unknown argument"),
        ("vllm", {"pipeline_parallel_size": 0}, "engine_args.pipeline_parallel_size: must be >="),
        ("vllm", {"kv_cache_dtype": "fp8 --x"}, "engine_args.kv_cache_dtype: must be a short"),
        ("vllm", {"enforce_eager": "yes"}, "engine_args.enforce_eager: must be a boolean"),
        ("mock", {"token_rate": -1}, "engine_args.token_rate: must be >= 0"),
        ("mock", {"embedding_dim": 0}, "engine_args.embedding_dim: must be >= 1"),
        ("sglang", {}, "engine: unknown engine"),
    ],
)
def test_it_rejects_bad_engine_args_naming_the_field(
    engine: str, args: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        validate_engine_args(engine, args)


def test_it_rejects_bad_engine_args_before_building_a_command() -> None:
    with pytest.raises(ValueError, match=re.escape("engine_args.max_num_seqs")):
        build_command(spec(max_num_seqs=-3))


def test_it_normalises_numbers_and_keeps_valid_args() -> None:
    assert validate_engine_args("mock", {"token_rate": 5, "default_max_tokens": 3}) == {
        "token_rate": 5.0,
        "default_max_tokens": 3,
    }
    assert validate_engine_args("vllm", {}) == {}


def test_it_lists_every_engine_of_the_protocol() -> None:
    assert set(ENGINE_ARGS) == {"vllm", "tgi", "mock"}
    assert set(ENGINE_ARGS) == set(get_args(EngineSpec.model_fields["engine"].annotation))
    for args in ENGINE_ARGS.values():
        for arg in args.values():
            assert arg.flag.startswith("--")


@pytest.mark.parametrize(
    ("bind", "probe"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("::", "[::1]"),
        ("10.0.0.5", "10.0.0.5"),
        ("fd00::1", "[fd00::1]"),
    ],
)
def test_it_probes_a_wildcard_bind_on_loopback(bind: str, probe: str) -> None:
    assert probe_host(bind) == probe
