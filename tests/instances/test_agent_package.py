"""Machines install the agent from the wheel the control plane serves."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from apps.instances.agents.bootstrap import agent_pip_spec
from apps.instances.agents.package import wheel_name
from tests.processes import ProcessGroup

pytestmark = pytest.mark.slow


def test_the_served_agent_wheel_installs_and_runs(processes: ProcessGroup, tmp_path: Path) -> None:
    # Given the control plane serving the agent wheel
    _, url = processes.web()
    wheel_url = f"{url}/internal/agent/v1/dist/{wheel_name()}"
    assert httpx.get(f"{url}/internal/agent/v1/dist/other.whl").status_code == 404
    # When pip installs it from there (dependencies are already in this interpreter)
    target = tmp_path / "site"
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--python",
            sys.executable,
            "--target",
            str(target),
            wheel_url,
        ],
        check=True,
        capture_output=True,
    )
    # Then the installed agent (not the checkout's) runs, with its console script declared
    result = subprocess.run(
        [sys.executable, "-c", "import agent; print(agent.__file__)"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip().startswith(str(target))
    help_text = subprocess.run(
        [sys.executable, "-m", "agent", "--help"],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{target}:{Path(httpx.__file__).parents[1]}"},
        capture_output=True,
        text=True,
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "--control-plane" in help_text.stdout
    entry_points = next(target.glob("inventiv_agent-*.dist-info")) / "entry_points.txt"
    assert "inventiv-agent = agent.__main__:main" in entry_points.read_text()


def test_cloud_init_installs_the_served_wheel_by_default(settings) -> None:  # type: ignore[no-untyped-def]
    settings.INVENTIV_AGENT_PIP_SPEC = ""
    settings.AGENT_API_URL = "https://cp.example.com"
    assert agent_pip_spec() == f"https://cp.example.com/internal/agent/v1/dist/{wheel_name()}"
    settings.INVENTIV_AGENT_PIP_SPEC = "inventiv-agent==1.2"
    assert agent_pip_spec() == "inventiv-agent==1.2"
