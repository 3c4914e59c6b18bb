"""Parse an engine's Prometheus text exposition into :class:`~agent.protocol.EngineMetrics`.

Counters and gauges are summed over label sets (several engines or data-parallel ranks expose
the same name with different labels); the KV-cache usage, a fraction, is averaged instead so it
stays within 0..1. Malformed lines are skipped, never raised on.
"""

from __future__ import annotations

import math

from agent.protocol import EngineMetrics

_SUMMED = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
}
_KV_PREFERRED = "vllm:kv_cache_usage_perc"
_KV_FALLBACK = "vllm:gpu_cache_usage_perc"
_WANTED = frozenset((*_SUMMED, _KV_PREFERRED, _KV_FALLBACK))
# text-generation-inference's router (router/src/infer, TGI 3.x): requests in the running batch
# and in the queue; prompt and generated tokens as the sums of its per-request histograms. TGI
# exposes no KV-cache occupancy: ``kv_cache_usage`` stays 0 for it.
_TGI_SUMMED = {
    "tgi_batch_current_size": "requests_running",
    "tgi_queue_size": "requests_waiting",
    "tgi_request_input_length_sum": "prompt_tokens_total",
    "tgi_request_generated_tokens_sum": "generation_tokens_total",
}
_TGI_WANTED = frozenset(_TGI_SUMMED)


def _split_sample(line: str) -> tuple[str, str] | None:
    """Return ``(metric_name, value_text)`` of one sample line, or None if it is malformed."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name = line[:brace]
        i, in_quotes = brace + 1, False
        while i < len(line):
            c = line[i]
            if in_quotes and c == "\\":
                i += 2
                continue
            if c == '"':
                in_quotes = not in_quotes
            elif c == "}" and not in_quotes:
                break
            i += 1
        else:
            return None
        rest = line[i + 1 :]
    elif space != -1:
        name, rest = line[:space], line[space:]
    else:
        return None
    parts = rest.split()
    if not parts:
        return None
    return name, parts[0]


def parse_samples(text: str, names: frozenset[str] = _WANTED) -> dict[str, list[float]]:
    """Values of every sample whose name is in ``names``, one entry per label set."""
    found: dict[str, list[float]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sample = _split_sample(line)
        if sample is None or sample[0] not in names:
            continue
        try:
            value = float(sample[1])
        except ValueError:
            continue
        if math.isfinite(value):
            found.setdefault(sample[0], []).append(value)
    return found


def parse_tgi_metrics(text: str) -> EngineMetrics:
    """Build :class:`EngineMetrics` from TGI's ``/metrics`` body. Missing names are 0."""
    samples = parse_samples(text, _TGI_WANTED)
    return EngineMetrics(
        **{field: sum(samples.get(name, ())) for name, field in _TGI_SUMMED.items()}
    )


def parse_engine_metrics(text: str, engine: str = "vllm") -> EngineMetrics:
    """Build :class:`EngineMetrics` from an engine's ``/metrics`` body (vLLM's names, or TGI's
    for ``engine`` "tgi"). Missing names are 0."""
    if engine == "tgi":
        return parse_tgi_metrics(text)
    samples = parse_samples(text)
    fields: dict[str, float] = {
        field: sum(samples.get(name, ())) for name, field in _SUMMED.items()
    }
    kv = samples.get(_KV_PREFERRED) or samples.get(_KV_FALLBACK) or []
    fields["kv_cache_usage"] = sum(kv) / len(kv) if kv else 0.0
    return EngineMetrics(**fields)
