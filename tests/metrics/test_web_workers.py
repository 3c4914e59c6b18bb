"""The web role as compose runs it (uvicorn --workers 2, PROMETHEUS_MULTIPROC_DIR): one
scrape counts the requests every worker served (issue 11)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.metrics.helpers import TOKEN, sample
from tests.processes import PYTHON, ProcessGroup, free_port

pytestmark = pytest.mark.slow

REQUESTS = 100


def test_one_scrape_counts_the_requests_of_both_uvicorn_workers(
    tmp_path: Path, processes: ProcessGroup
) -> None:
    # Given the web role with two uvicorn workers writing to one multiprocess directory
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = processes.start(
        "web",
        [PYTHON, "-m", "uvicorn", "inventiv.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2", "--lifespan", "off", "--log-level", "warning"],
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        INVENTIV_METRICS_TOKEN=TOKEN,
        INVENTIV_PUBLIC_URL=base,
    )  # fmt: skip
    processes.wait_http(web, base + "/healthz", timeout=60)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def count(text: str) -> float:
        name = "web_request_duration_seconds_count"
        return sample(text, name, route="<unmatched>", method="GET", status="404") or 0.0

    # When 100 requests arrive, each on a new connection (the kernel spreads them over both)
    for i in range(REQUESTS):
        assert httpx.get(f"{base}/no/such/page/{i}/").status_code == 404
    # Then every scrape, whichever worker answers it, counts all 100
    for _ in range(4):
        scrape = httpx.get(f"{base}/metrics", headers=auth)
        assert scrape.status_code == 200
        assert count(scrape.text) == REQUESTS
    # ... because both workers wrote their samples there
    writers = {p.name for p in multiproc.glob("histogram_*.db")}
    assert len(writers) == 2, writers
    assert web.alive()
