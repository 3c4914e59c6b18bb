"""Parsing an engine's Prometheus text into EngineMetrics, and nvidia-smi output."""

from __future__ import annotations

from agent.gpus import parse_nvidia_smi
from agent.metrics import parse_engine_metrics
from agent.protocol import GpuInfo

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.75
vllm:prompt_tokens_total{engine="0",model_name="llama"} 1200.0
vllm:prompt_tokens_total{engine="1",model_name="llama"} 800.0
vllm:generation_tokens_total{model_name="a \\"quoted} name"} 5e2 1700000000000
vllm:generation_tokens_created{model_name="llama"} 1.7e9
vllm:num_requests_running_other 99
garbage line
vllm:num_requests_waiting{model_name="x"} NaN
"""


def test_it_sums_counters_and_gauges_over_label_sets() -> None:
    m = parse_engine_metrics(VLLM_METRICS)
    assert m.requests_running == 5.0
    assert m.requests_waiting == 4.0
    assert m.prompt_tokens_total == 2000.0
    assert m.generation_tokens_total == 500.0


def test_it_averages_the_kv_cache_fraction() -> None:
    assert parse_engine_metrics(VLLM_METRICS).kv_cache_usage == 0.5


def test_it_falls_back_to_the_older_gpu_cache_metric() -> None:
    text = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.4\n'
    assert parse_engine_metrics(text).kv_cache_usage == 0.4


def test_it_reads_missing_metrics_as_zero() -> None:
    assert parse_engine_metrics("").requests_running == 0.0


def test_it_parses_nvidia_smi() -> None:
    out = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA L4, 23034\n\nweird\n"
    assert parse_nvidia_smi(out) == [
        GpuInfo(name="NVIDIA H100 80GB HBM3", memory_mib=81559),
        GpuInfo(name="NVIDIA L4", memory_mib=23034),
    ]
