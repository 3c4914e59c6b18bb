"""The wizard's short catalog of well-known models and its cost estimate.

The cost per million tokens is an *estimate*, labelled as such on the page: an offer's hourly
price divided by the tokens an engine of that size typically generates in an hour at a full
batch. Generation on one GPU is bound by memory bandwidth, so throughput scales with the GPUs'
bandwidth and inversely with the bytes of weights read per token; the batch multiplies it.
``BANDWIDTH_GBPS`` holds public figures for common data-centre GPUs; an unknown GPU counts as
the slowest listed. The real figure, once the model serves, is in the usage page.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from apps.instances.providers.matching import Offer
from apps.instances.providers.sizing import bytes_per_param


@dataclass(frozen=True)
class CatalogModel:
    key: str
    label: str
    model_id: str
    parameter_count_b: Decimal
    max_model_len: int


CATALOG: tuple[CatalogModel, ...] = (
    CatalogModel(
        "llama-3.1-8b",
        "Llama 3.1 8B Instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        Decimal("8.0"),
        8192,
    ),
    CatalogModel(
        "qwen2.5-7b", "Qwen2.5 7B Instruct", "Qwen/Qwen2.5-7B-Instruct", Decimal("7.6"), 8192
    ),
    CatalogModel(
        "mistral-7b",
        "Mistral 7B Instruct v0.3",
        "mistralai/Mistral-7B-Instruct-v0.3",
        Decimal("7.2"),
        8192,
    ),
    CatalogModel("gemma-2-9b", "Gemma 2 9B Instruct", "google/gemma-2-9b-it", Decimal("9.2"), 8192),
    CatalogModel(
        "qwen2.5-32b", "Qwen2.5 32B Instruct", "Qwen/Qwen2.5-32B-Instruct", Decimal("32.8"), 8192
    ),
    CatalogModel(
        "llama-3.3-70b",
        "Llama 3.3 70B Instruct",
        "meta-llama/Llama-3.3-70B-Instruct",
        Decimal("70.6"),
        8192,
    ),
)
CATALOG_BY_KEY = {item.key: item for item in CATALOG}

# Memory bandwidth per GPU (GB/s), matched on a word of the offer's GPU model name.
BANDWIDTH_GBPS: dict[str, int] = {
    "H200": 4800,
    "H100": 3350,
    "A100": 2000,
    "L40S": 864,
    "L40": 864,
    "A10": 600,
    "L4": 300,
    "T4": 320,
}
SLOWEST_GBPS = min(BANDWIDTH_GBPS.values())
# Sequences generated at once by a busy engine, and the share of the bandwidth reached.
BATCH = 32
EFFICIENCY = 0.5
MILLION = Decimal(1_000_000)


def _bandwidth(gpu_model: str) -> int:
    words = gpu_model.upper().replace("-", " ").split()
    for name, gbps in BANDWIDTH_GBPS.items():
        if name in words:
            return gbps
    return SLOWEST_GBPS


def tokens_per_second(
    offer: Offer, *, parameter_count_b: Decimal | None, dtype: str, quantization: str
) -> float | None:
    """Tokens an engine on ``offer`` generates per second at a full batch (estimate); None
    when the model's size is unknown or the offer has no GPU."""
    if not parameter_count_b or offer.gpu_count < 1:
        return None
    weights_gb = float(parameter_count_b) * bytes_per_param(dtype=dtype, quantization=quantization)
    per_sequence = _bandwidth(offer.gpu_model) * offer.gpu_count * EFFICIENCY / weights_gb
    return per_sequence * BATCH


def cost_per_million(
    offer: Offer, *, parameter_count_b: Decimal | None, dtype: str, quantization: str
) -> Decimal | None:
    """The offer's price per million generated tokens at a full batch (estimate); 0 for a free
    offer (the local provider), None when it cannot be estimated."""
    if offer.hourly_price == 0:
        return Decimal(0)
    rate = tokens_per_second(
        offer, parameter_count_b=parameter_count_b, dtype=dtype, quantization=quantization
    )
    if not rate:
        return None
    per_hour = Decimal(str(rate)) * 3600
    return (offer.hourly_price * MILLION / per_hour).quantize(Decimal("0.0001"))
