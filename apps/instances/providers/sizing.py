"""How much GPU a model code needs: explicit (GPU count × VRAM per GPU) or estimated from its
parameter count, dtype and context length.

The estimate is deliberately conservative: weights + one full-context KV cache + runtime
overhead, divided by the share of GPU memory vLLM takes (``gpu_memory_utilization`` 0.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from agent.engine_args import QUANTIZATION_BYTES_PER_PARAM

if TYPE_CHECKING:
    from apps.models.models import LlmModel

# Bytes per parameter for each dtype ("auto" loads 16-bit checkpoints as they are).
BYTES_PER_PARAM: dict[str, float] = {
    "auto": 2.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "float32": 4.0,
}
DEFAULT_CONTEXT = 8192
GPU_MEMORY_UTILIZATION = 0.9
# CUDA context, activations, the engine's own buffers (GB per GPU, plus 10 % of the weights).
RUNTIME_OVERHEAD_GB = 1.5
# Counts tensor parallelism supports (attention heads divide evenly by these).
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)


def kv_cache_gb(parameter_count_b: float, context: int, bytes_per_value: float) -> float:
    """KV cache for one sequence of ``context`` tokens. Per-token size grows roughly with the
    square root of the parameter count for today's grouped-query-attention models (Llama 3.1
    8B: 0.125 MB/token in 16 bits; 70B: 0.31 MB/token)."""
    mb_per_token = 0.045 * math.sqrt(max(parameter_count_b, 0.1)) * (bytes_per_value / 2.0)
    return mb_per_token * context / 1024.0


def bytes_per_param(*, dtype: str = "auto", quantization: str = "") -> float:
    """Bytes one weight takes once loaded: the quantization method's width when there is one
    (agent.engine_args.QUANTIZATION_BYTES_PER_PARAM), else the precision's."""
    if quantization:
        return QUANTIZATION_BYTES_PER_PARAM.get(quantization, 1.0)
    return BYTES_PER_PARAM.get(dtype, 2.0)


def estimate_vram_gb(
    *,
    parameter_count_b: float | Decimal,
    dtype: str = "auto",
    quantization: str = "",
    max_model_len: int | None = None,
) -> int:
    """Total GPU memory (GB, rounded up) to serve the model with one full-length sequence."""
    params = float(parameter_count_b)
    bytes_per_param_ = bytes_per_param(dtype=dtype, quantization=quantization)
    weights = params * bytes_per_param_
    kv = kv_cache_gb(params, max_model_len or DEFAULT_CONTEXT, max(bytes_per_param_, 1.0))
    needed = (weights * 1.1 + kv + RUNTIME_OVERHEAD_GB) / GPU_MEMORY_UTILIZATION
    return math.ceil(needed)


@dataclass(frozen=True)
class GpuNeeds:
    """What a machine must have. ``explicit`` needs ask for at least ``gpu_count`` GPUs of at
    least ``vram_per_gpu_gb`` each; estimated needs ask for ``total_vram_gb`` spread over a
    tensor-parallel-friendly number of GPUs of at least ``min_gpu_count``."""

    min_gpu_count: int
    vram_per_gpu_gb: int | None = None
    total_vram_gb: int | None = None
    explanation: str = ""

    def fits(self, *, gpu_count: int, vram_per_gpu_gb: int) -> bool:
        if self.min_gpu_count == 0:
            return True
        if gpu_count < self.min_gpu_count:
            return False
        if self.vram_per_gpu_gb is not None and vram_per_gpu_gb < self.vram_per_gpu_gb:
            return False
        if self.total_vram_gb is not None:
            if gpu_count not in TENSOR_PARALLEL_SIZES:
                return False
            if gpu_count * vram_per_gpu_gb < self.total_vram_gb:
                return False
        return True


def needs_for_model(llm_model: LlmModel) -> GpuNeeds:
    """The model code's needs: explicit when it states VRAM per GPU, else the estimate when it
    states a parameter count, else "at least ``gpu_count`` GPUs of any size"."""
    count = int(llm_model.gpu_count)
    if llm_model.vram_per_gpu_gb:
        return GpuNeeds(
            min_gpu_count=max(count, 1),
            vram_per_gpu_gb=int(llm_model.vram_per_gpu_gb),
            explanation=f"{max(count, 1)}× ≥{llm_model.vram_per_gpu_gb} GB (explicit)",
        )
    if llm_model.parameter_count_b:
        total = estimate_vram_gb(
            parameter_count_b=llm_model.parameter_count_b,
            dtype=llm_model.dtype,
            quantization=llm_model.quantization,
            max_model_len=llm_model.max_model_len,
        )
        return GpuNeeds(
            min_gpu_count=max(count, 1),
            total_vram_gb=total,
            explanation=(
                f"≥{total} GB in total (estimated: {llm_model.parameter_count_b}B parameters, "
                f"{llm_model.quantization or llm_model.dtype}, "
                f"context {llm_model.max_model_len or DEFAULT_CONTEXT})"
            ),
        )
    return GpuNeeds(min_gpu_count=count, explanation=f"{count}× GPU of any size")
