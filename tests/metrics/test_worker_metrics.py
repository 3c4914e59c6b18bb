"""The worker's metrics: task durations and failures from a real prefork worker whose children
write to PROMETHEUS_MULTIPROC_DIR, aggregated by the worker's own scrape endpoint (issue 11)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from inventiv.celery import app as celery_app
from tests.metrics.helpers import TOKEN, sample
from tests.processes import PYTHON, ProcessGroup, free_port, wait_for

pytestmark = pytest.mark.slow


def test_a_prefork_worker_reports_its_tasks_durations_and_failures(
    tmp_path: Path, processes: ProcessGroup
) -> None:
    # Given a prefork worker (two children) in multiprocess mode with its metrics port
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    port = free_port()
    worker = processes.start(
        "worker",
        [PYTHON, "-m", "celery", "-A", "inventiv", "worker", "-P", "prefork", "-c", "2",
         "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "INFO"],
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        INVENTIV_METRICS_TOKEN=TOKEN,
        INVENTIV_WORKER_METRICS_PORT=str(port),
        INVENTIV_WORKER_METRICS_HOST="127.0.0.1",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def scrape() -> str:
        response = httpx.get(url, headers=auth, timeout=5)
        assert response.status_code == 200, response.text
        return response.text

    wait_for(lambda: worker.alive() and scrape() is not None, timeout=60, message=worker.log())
    # When it runs four flushes (they succeed) and two calls with a wrong argument (they fail)
    for _ in range(4):
        celery_app.send_task("apps.billing.tasks.usage_flush_task")
    for _ in range(2):
        celery_app.send_task("apps.billing.tasks.budgets_enforce_task", args=["unexpected"])

    def counted() -> str | None:
        text = scrape()
        done = sample(
            text,
            "celery_task_duration_seconds_count",
            task="apps.billing.tasks.usage_flush_task",
            state="success",
        )
        failed = sample(
            text,
            "celery_task_duration_seconds_count",
            task="apps.billing.tasks.budgets_enforce_task",
            state="failure",
        )
        return text if (done, failed) == (4, 2) else None

    # Then one scrape counts every child's tasks: durations by state, failures by exception
    text = wait_for(counted, timeout=30, interval=0.2, message="the tasks in the scrape")
    total = sample(
        text,
        "celery_task_duration_seconds_sum",
        task="apps.billing.tasks.usage_flush_task",
        state="success",
    )
    assert total is not None and total > 0
    assert (
        sample(
            text,
            "celery_task_failures_total",
            task="apps.billing.tasks.budgets_enforce_task",
            exception="TypeError",
        )
        == 2
    )
    assert list(multiproc.glob("*.db")), "the children wrote their samples to the directory"
    # ... and the endpoint is protected like the web's
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    assert httpx.get(url.replace("/metrics", "/x"), headers=auth, timeout=5).status_code == 404
