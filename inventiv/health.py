"""Liveness and readiness. ``/healthz``: the process answers. ``/readyz``: the database (and
Redis when configured) answer; 503 with the failing check otherwise.

Probes call ``http://127.0.0.1:8000/readyz`` while ``ALLOWED_HOSTS`` names only the public host,
so ``HealthMiddleware`` (first in ``MIDDLEWARE``) answers these two paths before anything reads
the Host header. That is safe: the answers hold no URL, no cookie and nothing that depends on
the host, so host-header poisoning has nothing to poison. Every other path keeps Django's
host validation (400 for an unknown host).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_redis() -> None:
    url = settings.REDIS_URL
    assert url, "readyz checks Redis only when REDIS_URL is set"
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis
    results: dict[str, dict[str, object]] = {}
    ok = True
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:  # report, never raise: this is the probe's answer
            ok = False
            results[name] = {"ok": False, "error": type(exc).__name__}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": results}, status=200 if ok else 503
    )


PROBES = {"/healthz": healthz, "/readyz": readyz}


class HealthMiddleware:
    """Serves ``GET``/``HEAD`` ``/healthz`` and ``/readyz`` whatever the Host header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)
