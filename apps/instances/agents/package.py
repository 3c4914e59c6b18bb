"""The agent as a wheel, built from this codebase and served by the control plane, so that a
machine installs exactly the agent that speaks this control plane's protocol — no package
index to publish to. ``pip install <AGENT_API_URL>/internal/agent/v1/dist/<wheel>``.

The wheel is built by the PEP 517 backend that ``pyproject.toml`` declares (``[build-system]``),
from ``pyproject.toml`` alone for its metadata: name, version (``agent.__version__``),
Requires-Python, Requires-Dist (``requirements/agent.in``) and console scripts. The build runs
without isolation (the backend is installed with the control plane: nothing is downloaded),
in a subprocess (the hooks run in the source tree's directory and setuptools keeps global
state: neither belongs in a server process), on a copy of the sources in a temporary directory
(the checkout may be read-only and stays clean). Once per process, then cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import agent

ROOT = Path(agent.__file__).resolve().parent.parent
# What the build reads: the metadata, the package, and the requirements the metadata points to.
SOURCES = ("pyproject.toml", "agent", "requirements/agent.in")
BUILD_TIMEOUT_S = 120
# Zip timestamps (1980-01-01, the zip epoch): the same sources give the same bytes.
SOURCE_DATE_EPOCH = "315532800"
# Calls the backend's PEP 517 ``build_wheel`` hook in the current directory.
_HOOK = "import importlib, sys; importlib.import_module(sys.argv[1]).build_wheel(sys.argv[2])"


@dataclass(frozen=True)
class Wheel:
    filename: str
    content: bytes


class AgentWheelBuildError(RuntimeError):
    """The build backend failed (a broken checkout or a missing backend: not transient)."""


def _copy_sources(target: Path) -> None:
    for relative in SOURCES:
        source, destination = ROOT / relative, target / relative
        if source.is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


@lru_cache(maxsize=1)
def built_wheel() -> Wheel:
    """The agent wheel, built once per process. Raises ``AgentWheelBuildError``."""
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["build-backend"]
    with tempfile.TemporaryDirectory(prefix="inventiv-agent-wheel-") as tmp:
        source, dist = Path(tmp) / "source", Path(tmp) / "dist"
        _copy_sources(source)
        result = subprocess.run(
            [sys.executable, "-c", _HOOK, backend, str(dist)],
            cwd=source,
            env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        wheels = sorted(dist.glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise AgentWheelBuildError(
                f"building the agent wheel with {backend} failed "
                f"(exit {result.returncode}):\n{result.stderr[-4000:]}"
            )
        return Wheel(filename=wheels[0].name, content=wheels[0].read_bytes())


def wheel_name() -> str:
    """The wheel's file name, as the build backend named it."""
    return built_wheel().filename


def build_wheel() -> bytes:
    """The wheel's bytes (built once per process)."""
    return built_wheel().content
