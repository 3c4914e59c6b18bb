"""The allow-list of engine arguments, per engine: one importable place for both sides.

The control plane imports :data:`ENGINE_ARGS` and :func:`validate_engine_args` to validate what
an operator asks for; the agent validates again before building a command line. Anything not
listed here is rejected: engine arguments become argv of a process on a GPU machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ArgKind = Literal["bool", "int", "float", "str"]
ArgValue = bool | int | float | str

# A Hugging Face repo id, as the Hub allows it: ``name`` or ``namespace/name``, each part of
# letters, digits, '_', '.', '-', neither starting nor ending with '.' or '-', no '--' nor '..',
# 96 characters at most (huggingface_hub.utils.validate_repo_id).
_HF_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?"
_HF_REPO_ID = re.compile(rf"(?:{_HF_PART}/)?{_HF_PART}")
HF_REPO_ID_MAX = 96
# A local model directory (vLLM serves one as well as a repo id): absolute, made of the same
# safe characters, no '.' or '..' segment.
_LOCAL_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
LOCAL_PATH_MAX = 255

# Conservative token for free-form string values (dtype names, quantization methods): no
# whitespace, no leading dash (it would read as a flag), bounded length.
_SAFE_STR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class ArgSpec:
    """One allowed engine argument.

    ``flag`` is the command-line flag the value maps to. For ``bool`` arguments the flag is
    passed alone when the value is true and ``false_flag`` (if any) when it is false; otherwise
    a false value passes nothing. ``minimum``/``maximum`` are inclusive bounds for numbers.
    """

    kind: ArgKind
    flag: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    false_flag: str | None = None


ENGINE_ARGS: dict[str, dict[str, ArgSpec]] = {
    "vllm": {
        "tensor_parallel_size": ArgSpec(
            "int", "--tensor-parallel-size", "GPUs to shard the model over", 1, 64
        ),
        "pipeline_parallel_size": ArgSpec(
            "int", "--pipeline-parallel-size", "pipeline stages (GPUs per stage: tensor)", 1, 64
        ),
        "max_model_len": ArgSpec(
            "int", "--max-model-len", "context length in tokens", 16, 10_000_000
        ),
        "gpu_memory_utilization": ArgSpec(
            "float", "--gpu-memory-utilization", "fraction of GPU memory vLLM may use", 0.05, 1.0
        ),
        "enable_prefix_caching": ArgSpec(
            "bool",
            "--enable-prefix-caching",
            "automatic prefix caching",
            false_flag="--no-enable-prefix-caching",
        ),
        "max_num_seqs": ArgSpec(
            "int", "--max-num-seqs", "maximum concurrent sequences per step", 1, 65_536
        ),
        "kv_cache_dtype": ArgSpec("str", "--kv-cache-dtype", "KV-cache dtype, e.g. auto, fp8"),
        "trust_remote_code": ArgSpec(
            "bool", "--trust-remote-code", "run model code from the Hugging Face repo"
        ),
        "enforce_eager": ArgSpec("bool", "--enforce-eager", "disable CUDA graphs"),
    },
    # text-generation-launcher (TGI 3.x, launcher/src/main.rs). ``tensor_parallel_size`` keeps
    # vLLM's name (the control plane fills it in from the machine's GPUs alike) and maps to
    # ``--num-shard``; ``max_model_len`` becomes ``--max-total-tokens`` and, unless
    # ``max_input_tokens`` is given, ``--max-input-tokens`` one less (agent.engines).
    "tgi": {
        "tensor_parallel_size": ArgSpec(
            "int", "--num-shard", "GPUs to shard the model over", 1, 64
        ),
        "max_model_len": ArgSpec(
            "int", "--max-total-tokens", "prompt + generated tokens per request", 16, 10_000_000
        ),
        "max_input_tokens": ArgSpec(
            "int", "--max-input-tokens", "prompt tokens per request", 1, 10_000_000
        ),
        "max_concurrent_requests": ArgSpec(
            "int", "--max-concurrent-requests", "requests refused beyond this", 1, 65_536
        ),
        "max_batch_prefill_tokens": ArgSpec(
            "int", "--max-batch-prefill-tokens", "tokens per prefill batch", 1, 10_000_000
        ),
        "cuda_memory_fraction": ArgSpec(
            "float", "--cuda-memory-fraction", "fraction of GPU memory TGI may use", 0.05, 1.0
        ),
        "kv_cache_dtype": ArgSpec(
            "str", "--kv-cache-dtype", "KV-cache dtype", choices=("fp8_e4m3fn", "fp8_e5m2")
        ),
        "trust_remote_code": ArgSpec(
            "bool", "--trust-remote-code", "run model code from the Hugging Face repo"
        ),
    },
    "mock": {
        "token_rate": ArgSpec(
            "float", "--token-rate", "tokens per second per request; 0 = no delay", 0, 1_000_000
        ),
        "default_max_tokens": ArgSpec(
            "int", "--default-max-tokens", "completion length when none is asked", 1, 1_000_000
        ),
        "startup_delay_s": ArgSpec(
            "float", "--startup-delay-s", "seconds before /health answers 200", 0, 3600
        ),
        "embedding_dim": ArgSpec("int", "--embedding-dim", "embedding vector size", 1, 65_536),
        "max_model_len": ArgSpec(
            "int", "--max-model-len", "context length in tokens", 16, 10_000_000
        ),
        # Which API the mock serves, as a real model does: "chat" (every endpoint), "completion"
        # (a base model without a chat template: chat is refused with 400, as vLLM does) or
        # "embedding" (an embedding model: only /v1/embeddings).
        "task": ArgSpec(
            "str",
            "--task",
            "which API the model serves",
            choices=("chat", "completion", "embedding"),
        ),
        # Whose HTTP surface and metrics the mock speaks: "vllm" or "tgi" (agent.mock_engine).
        "flavor": ArgSpec("str", "--flavor", "vllm or tgi", choices=("vllm", "tgi")),
    },
}

# Precision and weight quantization: two settings of the model code (not engine arguments),
# validated by both sides. ``DTYPES`` are the values of vLLM's ``--dtype`` this platform offers
# ("half" and "float" are vLLM's aliases of float16 and float32, not offered twice).
DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
# ``vllm serve --quantization`` accepts exactly these (vllm/model_executor/layers/quantization/
# __init__.py, QuantizationMethods, vLLM 0.9-0.10); "" = none, or what the checkpoint declares
# (vLLM reads its quantization_config). Methods for other accelerators (tpu_int8, neuron_quant,
# ipex) are left out: the platform runs NVIDIA GPUs.
VLLM_QUANTIZATIONS: tuple[str, ...] = (
    "aqlm", "awq", "awq_marlin", "bitblas", "bitsandbytes", "compressed-tensors",
    "deepspeedfp", "experts_int8", "fbgemm_fp8", "fp8", "gguf", "gptq", "gptq_bitblas",
    "gptq_marlin", "gptq_marlin_24", "hqq", "marlin", "modelopt", "modelopt_fp4", "moe_wna16",
    "ptpc_fp8", "qqq", "quark", "torchao", "auto-round",
)  # fmt: skip
# Bytes each weight takes once loaded, for sizing (apps/instances/providers/sizing.py). A method
# whose width depends on the checkpoint (compressed-tensors, quark, torchao) counts 8 bits: the
# estimate stays on the safe side of a 4-bit checkpoint.
QUANTIZATION_BYTES_PER_PARAM: dict[str, float] = {
    "aqlm": 0.25, "awq": 0.5, "awq_marlin": 0.5, "bitblas": 0.5, "bitsandbytes": 0.5,
    "compressed-tensors": 1.0, "deepspeedfp": 1.0, "experts_int8": 1.0, "fbgemm_fp8": 1.0,
    "fp8": 1.0, "gguf": 0.5, "gptq": 0.5, "gptq_bitblas": 0.5, "gptq_marlin": 0.5,
    "gptq_marlin_24": 0.5, "hqq": 0.5, "marlin": 0.5, "modelopt": 1.0, "modelopt_fp4": 0.5,
    "moe_wna16": 0.5, "ptpc_fp8": 1.0, "qqq": 0.5, "quark": 1.0, "torchao": 1.0,
    "auto-round": 0.5,
}  # fmt: skip
# What TGI's ``text-generation-launcher`` accepts: ``--dtype`` (float16, bfloat16; "auto" =
# flag left out) and ``--quantize`` (launcher/src/main.rs, enum Quantization, TGI 3.x).
TGI_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16")
TGI_QUANTIZATIONS: tuple[str, ...] = (
    "awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes",
    "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8",
)  # fmt: skip


def validate_precision(engine: str, *, dtype: object, quantization: object) -> tuple[str, str]:
    """``(dtype, quantization)`` if ``engine`` accepts both; ``ValueError`` naming the field
    (``dtype: ...`` or ``quantization: ...``) otherwise. ``quantization`` "" means none (or
    the checkpoint's own). The mock engine takes any valid vLLM value and ignores it."""
    dtypes, methods = (
        (TGI_DTYPES, TGI_QUANTIZATIONS) if engine == "tgi" else (DTYPES, VLLM_QUANTIZATIONS)
    )
    if not isinstance(dtype, str) or dtype not in dtypes:
        raise ValueError(f"dtype: must be one of {', '.join(dtypes)} for engine {engine!r}")
    if not isinstance(quantization, str) or (quantization and quantization not in methods):
        raise ValueError(
            f"quantization: must be empty or one of {', '.join(methods)} for engine {engine!r}"
        )
    if engine == "tgi" and dtype != "auto" and quantization:
        # text-generation-launcher: "--dtype ... cannot be used with --quantize".
        raise ValueError("dtype: engine 'tgi' takes no dtype together with a quantization")
    return dtype, quantization


def _check_value(engine: str, name: str, spec: ArgSpec, value: object) -> ArgValue:
    field = f"engine_args.{name}"
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{field}: must be a boolean")
        return value
    if spec.kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{field}: must be a string")
        if spec.choices is not None:
            if value not in spec.choices:
                raise ValueError(f"{field}: must be one of {', '.join(spec.choices)}")
        elif not _SAFE_STR.fullmatch(value):
            raise ValueError(f"{field}: must be a short token of letters, digits, '_', '.', '-'")
        return value
    number: int | float
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field}: must be an integer")
        number = value
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{field}: must be a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{field}: must be finite")
    if spec.minimum is not None and number < spec.minimum:
        raise ValueError(f"{field}: must be >= {spec.minimum:g}")
    if spec.maximum is not None and number > spec.maximum:
        raise ValueError(f"{field}: must be <= {spec.maximum:g}")
    return number


def validate_engine_args(engine: str, args: Mapping[str, object]) -> dict[str, ArgValue]:
    """Return ``args`` checked against the allow-list of ``engine``, floats normalised.

    Raises ``ValueError`` whose message starts with the offending field
    (``engine_args.<name>: ...``) for an unknown engine, an unknown argument, a wrong type, or
    a value out of bounds. Pure function; never mutates ``args``.
    """
    allowed = ENGINE_ARGS.get(engine)
    if allowed is None:
        raise ValueError(f"engine: unknown engine {engine!r}")
    clean: dict[str, ArgValue] = {}
    for name, value in args.items():
        spec = allowed.get(name)
        if spec is None:
            raise ValueError(f"engine_args.{name}: unknown argument for engine {engine!r}")
        clean[name] = _check_value(engine, name, spec, value)
    return clean


def engine_args_to_argv(engine: str, args: Mapping[str, object]) -> list[str]:
    """Validate ``args`` and map them to command-line flags, in a stable (sorted) order."""
    clean = validate_engine_args(engine, args)
    allowed = ENGINE_ARGS[engine]
    argv: list[str] = []
    for name in sorted(clean):
        spec, value = allowed[name], clean[name]
        if spec.kind == "bool":
            flag = spec.flag if value else spec.false_flag
            if flag is not None:
                argv.append(flag)
        elif isinstance(value, float):
            argv += [spec.flag, repr(value)]
        else:
            argv += [spec.flag, str(value)]
    return argv


def validate_model_id(model_id: object) -> str:
    """``model_id`` if it is a Hugging Face repo id (``org/name`` or ``name``) or an absolute
    local path of safe segments; ``ValueError`` (``model_id: ...``) otherwise.

    The model id becomes a positional argument of ``vllm serve``: anything that could parse as
    a flag (a leading ``-``), carry whitespace, a ``=`` or shell-ish characters is refused, so
    that it can never smuggle an engine option past the allow-list above. Both sides call it:
    the control plane on create/update, the agent before building argv.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValueError("model_id: must be a non-empty string")
    if model_id.startswith("-"):
        raise ValueError("model_id: must not start with '-' (it would be read as an engine flag)")
    if model_id.startswith("/"):
        segments = model_id[1:].split("/")
        if (
            len(model_id) > LOCAL_PATH_MAX
            or not all(_LOCAL_SEGMENT.fullmatch(seg) for seg in segments)
            or any(seg in (".", "..") for seg in segments)
        ):
            raise ValueError(
                "model_id: a local path must be absolute, made of letters, digits, '_', '.', '-' "
                "segments, with no '..'"
            )
        return model_id
    if (
        len(model_id) > HF_REPO_ID_MAX
        or not _HF_REPO_ID.fullmatch(model_id)
        or "--" in model_id
        or ".." in model_id
    ):
        raise ValueError(
            "model_id: must be a Hugging Face repo id such as 'org/name' (letters, digits, '_', "
            f"'.', '-'; at most {HF_REPO_ID_MAX} characters) or an absolute local path"
        )
    return model_id
