"""What `make demo` runs, end to end in the embedded mode: the printed portal login, API key and
openai example work against the demo model code on a local agent with the mock engine; a second
`make demo` reattaches to the agent the first one left running and streams at once."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from apps.instances.providers.local import _tagged_pids
from tests.live import login
from tests.metrics.helpers import sample
from tests.processes import ROOT, ProcessGroup, embedded_env, free_port, wait_for

pytestmark = pytest.mark.slow

# What the Makefile's demo target runs (checked below, so the test follows the Makefile).
DEMO = ["run_embedded", "--demo", "--skip-checks", "--port"]
# Generous on purpose: this checks the path (one start, reattached agent, no provisioning);
# the speed is measured by bench/demo.py (docs/operations.md).
SECOND_START_BOUND_S = 15.0


def _agents_of(base_url: str) -> list[int]:
    """Pids of the local agents and engines serving the control plane at ``base_url`` (agents
    get an allow-listed environment: found by the control plane URL they carry)."""
    marker = f"INVENTIV_CONTROL_PLANE_URL={base_url}\0".encode()
    found = []
    for pids in _tagged_pids().values():
        for pid in pids:
            try:
                if marker in Path(f"/proc/{pid}/environ").read_bytes():
                    found.append(pid)
            except OSError:
                continue
    return sorted(found)


def _first_token(base_url: str, api_key: str) -> str:
    """The first content chunk of a streamed chat completion (raises until one arrives)."""
    body = {"model": "demo-chat", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    return str(delta)
    raise AssertionError("the stream ended without content")


def test_the_demo_serves_a_streamed_answer_with_the_printed_key(
    tmp_path: Path, processes: ProcessGroup
) -> None:
    # Given the demo's setup and the embedded platform, as `make demo` runs them
    env = embedded_env(tmp_path / "state")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    manage = [sys.executable, "manage.py"]
    setup = subprocess.run(
        [*manage, "demo_setup", "--base-url", base_url],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    state = json.loads((tmp_path / "state" / "demo.json").read_text())
    assert state["password"] in setup.stdout and state["api_key"] in setup.stdout
    assert f"OpenAI(base_url='{base_url}/v1'" in setup.stdout
    processes.env = env
    proc = processes.start("demo", [*manage, "run_embedded", "--port", str(port)])
    processes.wait_http(proc, base_url + "/healthz")

    # When a client streams a chat completion with the printed key (the demo model may still
    # be starting: it waits, as a newcomer would retry)
    client = OpenAI(base_url=f"{base_url}/v1", api_key=state["api_key"], max_retries=0)

    def streamed() -> str:
        chunks = client.chat.completions.create(
            model="demo-chat", stream=True, messages=[{"role": "user", "content": "Hello!"}]
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    text = wait_for(streamed, timeout=40, interval=0.2, message="a streamed answer")
    # Then the answer streams, the admin login works, and a second setup reuses everything
    assert text.startswith("tok") and len(text.split()) == 32
    admin = login(base_url, "admin@inventiv.local", state["password"])
    assert admin.get("/admin/").status_code == 200
    again = subprocess.run(
        [*manage, "demo_setup", "--base-url", base_url],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert state["api_key"] in again.stdout and state["password"] in again.stdout
    models = httpx.get(
        f"{base_url}/v1/models", headers={"Authorization": f"Bearer {state['api_key']}"}
    ).json()
    assert [m["id"] for m in models["data"]] == ["demo-chat"]

    # When the platform stops (without --demo or --keep-agents), its local instances stop too
    assert _agents_of(base_url), "the demo's agent and engine run for the demo's control plane"
    proc.stop()
    assert wait_for(lambda: not _agents_of(base_url), timeout=15, message="no demo agent left")


def test_a_second_make_demo_reattaches_to_its_agent_and_streams_at_once(
    tmp_path: Path, processes: ProcessGroup
) -> None:
    # Given the Makefile's demo command on a fresh, unmigrated state directory
    makefile = (ROOT / "Makefile").read_text()
    assert "manage.py " + " ".join(DEMO) + " $(PORT)" in makefile
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "INVENTIV_TEST_DB_NAME")
    }
    env["INVENTIV_STATE_DIR"] = str(tmp_path / "state")
    env["INVENTIV_METRICS_TOKEN"] = "demo-metrics"
    processes.env = env
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "manage.py", *DEMO, str(port)]
    moved_url = base_url
    try:
        # When it runs a first time: it migrates, prints the banner and serves
        first = processes.start("demo-1", command)
        banner = wait_for(
            lambda: re.search(r"Portal login   : (\S+)\s+(\S+) / (\S+)", first.log()),
            timeout=60,
            message="the banner",
        )
        api_key = re.search(r"API key        : (\S+)", first.log())[1]  # type: ignore[index]
        assert banner[1] == f"{base_url}/accounts/login/"
        state = json.loads((tmp_path / "state" / "demo.json").read_text())
        assert (banner[2], banner[3], api_key) == (
            "admin@inventiv.local",
            state["password"],
            state["api_key"],
        )
        assert wait_for(lambda: _first_token(base_url, api_key), timeout=40, interval=0.1)
        portal = login(base_url, banner[2], banner[3])
        assert portal.get("/admin/").status_code == 200
        # ... with the operators' fleet page and one /metrics for web, worker and fleet
        fleet = portal.get("/ops/fleet/")
        assert fleet.status_code == 200 and 'id="provider-local"' in fleet.text
        scrape = httpx.get(
            f"{base_url}/metrics", headers={"Authorization": "Bearer demo-metrics"}
        ).text
        assert sample(scrape, "fleet_instances", provider="local", status="ready") == 1
        assert sample(scrape, "fleet_model_codes", status="active") == 1
        reconciles = sample(
            scrape,
            "celery_task_duration_seconds_count",
            task="apps.instances.tasks.reconcile_task",
            state="success",
        )
        assert reconciles is not None and reconciles >= 1
        assert sample(scrape, "web_request_duration_seconds_count", route="ops/fleet/") == 1
        agents = _agents_of(base_url)
        assert agents

        # ... and is stopped with Ctrl-C: its agent stays, parked
        first.kill(signal.SIGINT)
        first.proc.wait(20)
        assert "Stopped" not in first.log() and "Traceback" not in first.log()
        assert _agents_of(base_url) == agents

        # When `make demo` runs again
        started = time.monotonic()
        second = processes.start("demo-2", command)
        wait_for(
            lambda: _first_token(base_url, api_key),
            timeout=SECOND_START_BOUND_S,
            interval=0.05,
            message="the second start's first token",
        )
        elapsed = time.monotonic() - started
        # Then it streamed within the bound, through the same agent (reattached, not a new
        # machine), with the same printed login and key
        assert elapsed < SECOND_START_BOUND_S
        assert _agents_of(base_url) == agents
        assert "1 reattached, 0 replaced" in second.log()
        assert state["password"] in second.log() and api_key in second.log()
        second.kill(signal.SIGINT)
        second.proc.wait(20)

        # When it runs on another port, then the kept agent (which calls the former address)
        # is replaced by one at the new address, which serves
        other_port = free_port()
        moved_url = f"http://127.0.0.1:{other_port}"
        third = processes.start("demo-3", [sys.executable, "manage.py", *DEMO, str(other_port)])
        assert wait_for(lambda: _first_token(moved_url, api_key), timeout=60, interval=0.1)
        assert not _agents_of(base_url) and _agents_of(moved_url)
        third.kill(signal.SIGINT)
        third.proc.wait(20)

        # When the agent is stopped with `make demo-stop`'s command, then none is left
        subprocess.run(
            [sys.executable, "manage.py", "run_embedded", "--stop-agents"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        assert not _agents_of(moved_url)
    finally:
        for pid in _agents_of(base_url) + _agents_of(moved_url):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_migration_check_answers_from_the_recorded_migrations(db: Any) -> None:
    # Given the suite's database, fully migrated: every migration file is recorded
    from django.db.migrations.recorder import MigrationRecorder

    from apps.instances.management.commands.run_embedded import _all_recorded, _migrate_if_needed

    assert _all_recorded()
    assert _migrate_if_needed() is False
    # When one migration's record is missing, then the quick check says so (the full plan
    # decides)
    MigrationRecorder.Migration.objects.filter(app="instances").order_by("-id")[:1].get().delete()
    assert not _all_recorded()
