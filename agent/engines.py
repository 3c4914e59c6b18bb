"""Command lines for the engines the agent can run.

:func:`build_command` turns an :class:`~agent.protocol.EngineSpec` into argv and environment.
Guarantees: engine arguments are validated against :mod:`agent.engine_args` first (so an
unknown argument never reaches argv), the engine API key travels in the environment rather
than argv (argv is visible in ``ps``), and the agent's own secrets are removed from the
child's environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.engine_args import (
    engine_args_to_argv,
    validate_engine_args,
    validate_model_id,
    validate_precision,
)
from agent.protocol import EngineSpec

# Environment variables of the agent that the engine must never see.
_AGENT_SECRETS = ("INVENTIV_BOOTSTRAP_TOKEN",)
# Where the engines read their secret: only the spec's key, set by the builder, may be there.
_ENGINE_KEY_VARS = ("VLLM_API_KEY", "API_KEY", "MOCK_ENGINE_API_KEY")

VLLM_EXECUTABLE = "vllm"
TGI_EXECUTABLE = "text-generation-launcher"


@dataclass(frozen=True)
class EngineCommand:
    """What to execute. ``env`` is the complete environment of the child."""

    argv: list[str]
    env: dict[str, str]


# Where Hugging Face libraries read a token; only the spec's token may reach the engine.
_HF_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")


def _base_env(base: Mapping[str, str] | None, spec: EngineSpec) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in (*_AGENT_SECRETS, *_HF_TOKEN_VARS, *_ENGINE_KEY_VARS):
        env.pop(name, None)
    if spec.hf_token:
        # The organization's token for gated or private models: environment only (argv is
        # visible to every user of the machine in ``ps``).
        env["HF_TOKEN"] = spec.hf_token
    return env


def _precision_argv(spec: EngineSpec) -> list[str]:
    dtype, quantization = validate_precision(
        spec.engine, dtype=spec.dtype, quantization=spec.quantization
    )
    argv = [] if dtype == "auto" else ["--dtype", dtype]
    return argv + (["--quantization", quantization] if quantization else [])


def build_vllm_command(
    spec: EngineSpec, base_env: Mapping[str, str] | None = None
) -> EngineCommand:
    """``vllm serve <model_id> ...``; the API key is passed as ``VLLM_API_KEY``, the Hugging
    Face token (if any) as ``HF_TOKEN``. ``--dtype`` is left out for "auto" (vLLM's default)."""
    argv = [
        VLLM_EXECUTABLE,
        "serve",
        spec.model_id,
        "--served-model-name",
        spec.served_model_name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        *_precision_argv(spec),
        *engine_args_to_argv("vllm", spec.engine_args),
    ]
    env = _base_env(base_env, spec)
    env["VLLM_API_KEY"] = spec.api_key
    return EngineCommand(argv=argv, env=env)


def build_tgi_command(spec: EngineSpec, base_env: Mapping[str, str] | None = None) -> EngineCommand:
    """``text-generation-launcher --model-id <id> --hostname <h> --port <p> ...`` (TGI 3.x).

    The engine secret is passed as ``API_KEY`` (the launcher's ``--api-key``, read from its
    environment: TGI then requires ``Authorization: Bearer`` on every route but ``/health``
    and ``/metrics``), the Hugging Face token as ``HF_TOKEN``. ``tensor_parallel_size`` is
    ``--num-shard``; ``max_model_len`` is ``--max-total-tokens`` and ``--max-input-tokens`` one
    less unless ``max_input_tokens`` is given (it must be smaller). ``--usage-stats off``: the
    machine runs customers' traffic and reports nothing to Hugging Face."""
    args = validate_engine_args("tgi", spec.engine_args)
    total, given_input = args.get("max_model_len"), args.get("max_input_tokens")
    if isinstance(total, int) and given_input is None:
        args["max_input_tokens"] = total - 1
    elif isinstance(total, int) and isinstance(given_input, int) and given_input >= total:
        raise ValueError("engine_args.max_input_tokens: must be less than max_model_len")
    dtype, quantization = validate_precision(
        "tgi", dtype=spec.dtype, quantization=spec.quantization
    )
    argv = [
        TGI_EXECUTABLE,
        "--model-id",
        spec.model_id,
        "--hostname",
        spec.host,
        "--port",
        str(spec.port),
        *([] if dtype == "auto" else ["--dtype", dtype]),
        *(["--quantize", quantization] if quantization else []),
        *engine_args_to_argv("tgi", args),
        "--usage-stats",
        "off",
    ]
    env = _base_env(base_env, spec)
    env["API_KEY"] = spec.api_key
    return EngineCommand(argv=argv, env=env)


def build_mock_command(
    spec: EngineSpec, base_env: Mapping[str, str] | None = None
) -> EngineCommand:
    """``python -m agent.mock_engine ...``; the API key is passed as ``MOCK_ENGINE_API_KEY``."""
    argv = [
        sys.executable,
        "-m",
        "agent.mock_engine",
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--served-model-name",
        spec.served_model_name,
        "--model-id",
        spec.model_id,
        *engine_args_to_argv("mock", spec.engine_args),
    ]
    validate_precision("mock", dtype=spec.dtype, quantization=spec.quantization)
    env = _base_env(base_env, spec)
    env["MOCK_ENGINE_API_KEY"] = spec.api_key
    # The child must import this very package, however the agent itself was started.
    package_root = str(Path(__file__).resolve().parent.parent)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_root if not existing else f"{package_root}{os.pathsep}{existing}"
    return EngineCommand(argv=argv, env=env)


def build_command(spec: EngineSpec, base_env: Mapping[str, str] | None = None) -> EngineCommand:
    """Dispatch on ``spec.engine``. Raises ``ValueError`` naming the field for bad engine args
    or a model id that is not a repo id or a safe local path (it could read as a flag)."""
    validate_model_id(spec.model_id)
    if spec.engine == "vllm":
        return build_vllm_command(spec, base_env)
    if spec.engine == "tgi":
        return build_tgi_command(spec, base_env)
    return build_mock_command(spec, base_env)


def probe_host(bind_host: str) -> str:
    """The address the agent uses to reach an engine bound to ``bind_host`` on this machine."""
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host == "::":
        return "[::1]"
    if ":" in bind_host and not bind_host.startswith("["):
        return f"[{bind_host}]"
    return bind_host
