"""GPU facts for registration and heartbeats, from ``nvidia-smi`` when it exists.

Best-effort: any failure (no driver, no binary, timeout, odd output) yields an empty list.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from agent.protocol import GpuInfo

log = logging.getLogger(__name__)


def parse_nvidia_smi(output: str) -> list[GpuInfo]:
    """Parse ``--query-gpu=name,memory.total --format=csv,noheader,nounits`` output."""
    gpus: list[GpuInfo] = []
    for line in output.splitlines():
        name, sep, memory = line.rpartition(",")
        if not sep:
            continue
        try:
            gpus.append(GpuInfo(name=name.strip(), memory_mib=int(float(memory.strip()))))
        except ValueError:
            continue
    return gpus


def detect_gpus(timeout_s: float = 10.0) -> list[GpuInfo]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        result = subprocess.run(
            [binary, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return []
    return parse_nvidia_smi(result.stdout)
