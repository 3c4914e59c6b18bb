"""What `make demo` runs, end to end in the embedded mode: the printed admin login, API key and
openai example work against the demo model code on a local agent with the mock engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from apps.instances.providers.local import _tagged_pids
from tests.live import login
from tests.processes import ROOT, ProcessGroup, embedded_env, free_port, wait_for

pytestmark = pytest.mark.slow


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

    # When the platform stops, then its local instances stop with it
    def demo_agents() -> list[int]:
        # (agents get an allow-listed environment: found by the control plane they serve)
        marker = f"INVENTIV_CONTROL_PLANE_URL={base_url}\0".encode()
        found = []
        for pids in _tagged_pids().values():
            for pid in pids:
                try:
                    if marker in Path(f"/proc/{pid}/environ").read_bytes():
                        found.append(pid)
                except OSError:
                    continue
        return found

    assert demo_agents(), "the demo's agent and engine run for the demo's control plane"
    proc.stop()
    assert wait_for(lambda: not demo_agents(), timeout=15, message="no demo agent left")
