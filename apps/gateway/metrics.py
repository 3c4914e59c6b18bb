"""Prometheus metrics of one gateway process (scraped per replica; see docs/gateway.md)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    exposition,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# Labelled children by (metric, label values): ``labels()`` validates and locks on every call,
# a measurable share of a request's CPU (bench/gateway.py --profile); children never go away.
_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}
_CHILDREN_MAX = 100_000


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once."""
    key = (id(metric), values)
    found = _CHILDREN.get(key)
    if found is None:
        if len(_CHILDREN) >= _CHILDREN_MAX:
            _CHILDREN.clear()
        found = _CHILDREN[key] = metric.labels(*values)
    return found


_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "gateway_requests",
    "Requests answered, by model code, endpoint and HTTP status.",
    ["model", "endpoint", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "gateway_request_duration_seconds",
    "Time from request to the last byte of the response.",
    ["model", "endpoint"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Streams: time from request to the first content chunk sent to the client.",
    ["model"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Time spent in the gateway itself (not waiting for the engine).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
    registry=REGISTRY,
)
TOKENS = Counter(
    "gateway_tokens", "Tokens, by model code and kind.", ["model", "kind"], registry=REGISTRY
)
IN_FLIGHT = Gauge(
    "gateway_in_flight_requests",
    "Requests in flight, by model code.",
    ["model"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors",
    "Failed engine calls, by model code and kind (connect, status_5xx, timeout, stream).",
    ["model", "kind"],
    registry=REGISTRY,
)
USAGE_BACKLOG = Gauge(
    "gateway_usage_backlog_records",
    "Usage records written by the gateways and not yet flushed to the database (sampled each "
    "second; alert above USAGE_BACKLOG_ALERT).",
    registry=REGISTRY,
)
USAGE_PENDING = Gauge(
    "gateway_usage_pending_records",
    "Usage records and checkpoints this process holds that the buffer has not taken yet.",
    registry=REGISTRY,
)
USAGE_WRITE_FAILURES = Counter(
    "gateway_usage_write_failures",
    "Failed writes to the usage buffer (retried).",
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), exposition.CONTENT_TYPE_LATEST
