"""In-process counters of the mock engine, rendered in Prometheus text with vLLM's names."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines = [f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


@dataclass
class Stats:
    """Mutated only from the event loop thread, so plain integers are enough."""

    model_name: str
    flavor: str = "vllm"  # "tgi": rendered with text-generation-inference's names
    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    success: dict[str, int] = field(default_factory=dict)
    ttft: Histogram = field(default_factory=lambda: Histogram(_TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(_E2E_BUCKETS))

    def finished(
        self,
        *,
        prompt_tokens: int,
        generation_tokens: int,
        ttft: float,
        e2e: float,
        reason: str = "length",
    ) -> None:
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens
        self.success[reason] = self.success.get(reason, 0) + 1
        self.ttft.observe(ttft)
        self.e2e.observe(e2e)

    def render_tgi(self) -> bytes:
        """TGI's router metrics (unlabelled, as TGI exposes them)."""
        lines = [
            "# TYPE tgi_batch_current_size gauge",
            f"tgi_batch_current_size {self.running}",
            "# TYPE tgi_queue_size gauge",
            f"tgi_queue_size {self.waiting}",
            "# TYPE tgi_batch_current_max_tokens gauge",
            f"tgi_batch_current_max_tokens {self.running * 16}",
            "# TYPE tgi_request_success counter",
            f"tgi_request_success {sum(self.success.values())}",
            "# TYPE tgi_request_input_length histogram",
            f"tgi_request_input_length_sum {float(self.prompt_tokens)}",
            f"tgi_request_input_length_count {sum(self.success.values())}",
            "# TYPE tgi_request_generated_tokens histogram",
            f"tgi_request_generated_tokens_sum {float(self.generation_tokens)}",
            f"tgi_request_generated_tokens_count {sum(self.success.values())}",
        ]
        return ("\n".join(lines) + "\n").encode()

    def render(self) -> bytes:
        if self.flavor == "tgi":
            return self.render_tgi()
        escaped = self.model_name.replace("\\", "\\\\").replace('"', '\\"')
        labels = f'model_name="{escaped}"'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {self.running}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {self.waiting}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {min(1.0, self.running / 100)}",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{labels}}} {float(self.prompt_tokens)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {float(self.generation_tokens)}",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason in sorted(self.success) or ["length"]:
            n = self.success.get(reason, 0)
            lines.append(
                f'vllm:request_success_total{{finished_reason="{reason}",{labels}}} {float(n)}'
            )
        lines += self.ttft.render("vllm:time_to_first_token_seconds", labels)
        lines += self.e2e.render("vllm:e2e_request_latency_seconds", labels)
        return ("\n".join(lines) + "\n").encode()
