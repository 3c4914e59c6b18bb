"""The agent as a wheel, built from this codebase and served by the control plane, so that a
machine installs exactly the agent that speaks this control plane's protocol — no package
index to publish to. ``pip install <AGENT_API_URL>/internal/agent/v1/dist/<wheel>``."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from functools import lru_cache
from pathlib import Path

import agent

AGENT_DIR = Path(agent.__file__).resolve().parent
ROOT = AGENT_DIR.parent
DIST = "inventiv_agent"


def wheel_name() -> str:
    return f"{DIST}-{agent.__version__}-py3-none-any.whl"


def _requirements() -> list[str]:
    lines = (ROOT / "requirements" / "agent.in").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


@lru_cache(maxsize=1)
def build_wheel() -> bytes:
    """A pure-Python wheel of ``agent/`` (sources only) with its pinned requirements and the
    ``inventiv-agent`` console script. Deterministic for a given checkout."""
    files: dict[str, bytes] = {}
    for path in sorted(AGENT_DIR.rglob("*.py")):
        files[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    files["agent/README.md"] = (AGENT_DIR / "README.md").read_bytes()
    info = f"{DIST}-{agent.__version__}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        "Name: inventiv-agent",
        f"Version: {agent.__version__}",
        "Summary: Inventiv Agents machine agent: supervises an inference engine.",
        "Requires-Python: >=3.10",
        *[f"Requires-Dist: {req}" for req in _requirements()],
    ]
    files[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: inventiv\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/entry_points.txt"] = (
        b"[console_scripts]\ninventiv-agent = agent.__main__:main\n"
        b"inventiv-host-agent = agent.host:main\n"
    )
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            wheel.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
