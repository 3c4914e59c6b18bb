"""Prometheus metrics of the web and worker roles (the gateway keeps its own registry:
``apps/gateway/metrics.py``). Nothing here imports a model, so the Celery app can connect the
task signals before Django is set up; the fleet gauges and the web endpoint are in
``inventiv/metrics_web.py``.

* web: ``web_request_duration_seconds{route,method,status}``, by :class:`MetricsMiddleware`;
* worker: ``celery_task_duration_seconds{task,state}`` and
  ``celery_task_failures_total{task,exception}``, from Celery's task signals, in every process
  that runs tasks (the embedded mode's in-process worker included);
* multiple processes per role (uvicorn ``--workers``, the prefork pool): with
  ``PROMETHEUS_MULTIPROC_DIR`` set (an empty directory per role, e.g. a tmpfs), every process
  writes its samples there and one scrape aggregates them all
  (``prometheus_client.multiprocess``); without it each process answers for itself.

Guarantees: recording a sample never raises into the request or the task (metrics are best
effort); an unset ``INVENTIV_METRICS_TOKEN`` turns the endpoints off (404), a wrong one is 401,
compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from celery import signals
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    make_wsgi_app,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TASK = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"

WEB_LATENCY = Histogram(
    "web_request_duration_seconds",
    "Web requests (portal, REST, admin): time until the response is returned, by URL route "
    "(the pattern, not the path), method and HTTP status.",
    ["route", "method", "status"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
TASK_DURATION = Histogram(
    "celery_task_duration_seconds",
    "Celery tasks run by this worker, by task name and final state (success, failure, retry).",
    ["task", "state"],
    buckets=_TASK,
    registry=REGISTRY,
)
TASK_FAILURES = Counter(
    "celery_task_failures",
    "Celery tasks that raised, by task name and exception class.",
    ["task", "exception"],
    registry=REGISTRY,
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_registry() -> CollectorRegistry:
    """What this role's scrape answers: every process of the role (multiprocess mode) or this
    process's registry."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class Forward(Collector):
    """Adds another registry's metrics to a registry (one scrape, several sources)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


def token_ok(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = header.partition(" ")
    given_bytes = given.strip().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token.encode())


# --- web --------------------------------------------------------------------------------------


def _route_of(request: Any) -> str:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    return str(route) if route is not None else UNMATCHED


def _observe(request: Any, status: int, started: float) -> None:
    try:
        method = request.method if request.method in _METHODS else "other"
        WEB_LATENCY.labels(_route_of(request), method, str(status)).observe(
            time.perf_counter() - started
        )
    except Exception:  # best effort: never fail a request for a sample
        logger.exception("cannot record a web request sample")


class MetricsMiddleware:
    """Times every request Django serves (sync and async alike, no thread hop on the ASGI web
    role). The route label is the matched URL pattern (bounded), ``<unmatched>`` otherwise."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        _observe(request, response.status_code, started)
        return response

    async def _acall(self, request: Any) -> Any:
        started = time.perf_counter()
        response = await self.get_response(request)
        _observe(request, response.status_code, started)
        return response


# --- worker -----------------------------------------------------------------------------------

_started: dict[str, float] = {}
_started_lock = threading.Lock()


@signals.task_prerun.connect
def _task_prerun(task_id: str = "", **_: Any) -> None:
    with _started_lock:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_postrun(task_id: str = "", task: Any = None, state: str | None = None, **_: Any) -> None:
    with _started_lock:
        started = _started.pop(task_id, None)
    if started is None or task is None:
        return
    try:
        label = (state or "unknown").lower()
        TASK_DURATION.labels(task.name, label).observe(time.perf_counter() - started)
    except Exception:
        logger.exception("cannot record a task sample")


@signals.task_failure.connect
def _task_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    try:
        name = getattr(sender, "name", None) or "unknown"
        TASK_FAILURES.labels(name, type(exception).__name__).inc()
    except Exception:
        logger.exception("cannot record a task failure")


@signals.worker_process_shutdown.connect
def _child_exit(**_: Any) -> None:
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def metrics_wsgi_app(
    registry_of: Callable[[], CollectorRegistry], token: str
) -> Callable[..., Iterator[bytes]]:
    """``GET /metrics`` with ``Authorization: Bearer <token>``; 401 otherwise, 404 elsewhere."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return iter([b"not found\n"])
        if not token_ok(str(environ.get("HTTP_AUTHORIZATION", "")), token):
            headers = [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
            start_response("401 Unauthorized", headers)
            return iter([b"unauthorized\n"])
        return iter(make_wsgi_app(registry_of())(environ, start_response))

    return app


def serve_worker_metrics(host: str, port: int, token: str) -> ThreadingWSGIServer:
    """The worker role's scrape endpoint, in a daemon thread of the worker's main process (its
    pool's children write to ``PROMETHEUS_MULTIPROC_DIR``)."""
    server = make_server(
        host,
        port,
        metrics_wsgi_app(process_registry, token),
        ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    logger.info("worker metrics on http://%s:%d/metrics", host, server.server_port)
    return server


@signals.worker_ready.connect
def _worker_ready(**_: Any) -> None:
    from django.conf import settings

    port = settings.WORKER_METRICS_PORT
    if port and settings.METRICS_TOKEN:
        serve_worker_metrics(settings.WORKER_METRICS_HOST, port, settings.METRICS_TOKEN)
    elif port:
        logger.warning("INVENTIV_WORKER_METRICS_PORT is set without INVENTIV_METRICS_TOKEN: off")
