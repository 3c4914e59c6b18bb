"""`make demo` benchmark: time from the command to the first streamed token, first and second
start, against the former three-command start measured in the same run (issue 11).

    .venv/bin/python -m bench.demo [--runs 3]

Embedded mode only (no DATABASE_URL/REDIS_URL needed: each run has its own state directory).
Per run:
* first start: ``run_embedded --demo --skip-checks`` (what ``make demo`` runs) on an empty state
  directory (migrations, admin, model code, key, a fresh agent and engine), stopped with Ctrl-C;
* second start: the same command again (nothing to migrate, the agent reattached);
* baseline second start: the three commands ``make demo`` ran before (``migrate``,
  ``demo_setup``, ``run_embedded``), whose previous run had stopped its agent.
Each row: the medians of the time until the banner's API key is printed and until the first
content token of a streamed chat completion arrives, and that time against the baseline's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
NEW = ["{py} manage.py run_embedded --demo --skip-checks --port {port}"]
OLD = [
    "{py} manage.py migrate -v0",
    "{py} manage.py demo_setup --base-url http://127.0.0.1:{port}",
    "{py} manage.py run_embedded --port {port}",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["INVENTIV_STATE_DIR"] = str(state)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _first_token(base: str, key: str) -> bool:
    body = {"model": "demo-chat", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    try:
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ) as response:
            if response.status_code != 200:
                return False
            for line in response.iter_lines():
                if line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                    return True
    except httpx.HTTPError:
        return False
    return False


def start(commands: list[str], state: Path, timeout: float = 90) -> tuple[float, float]:
    """Run ``commands`` (joined by &&) until its first token; (key printed, first token) in
    seconds from the command. Stopped with SIGINT (Ctrl-C) afterwards."""
    port = _free_port()
    shell = " && ".join(c.format(py=PY, port=port) for c in commands)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", shell],
        cwd=ROOT,
        env=_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    printed: dict[str, object] = {}
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"API key\s*: (\S+)", line)
            if found and "key" not in printed:
                printed["at"] = time.monotonic() - started
                printed["key"] = found[1]

    threading.Thread(target=read, daemon=True).start()
    try:
        while "key" not in printed:
            if time.monotonic() - started > timeout or proc.poll() is not None:
                raise RuntimeError("no banner:\n" + "".join(lines[-30:]))
            time.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        while not _first_token(base, str(printed["key"])):
            if time.monotonic() - started > timeout:
                raise RuntimeError("no first token:\n" + "".join(lines[-30:]))
            time.sleep(0.02)
        return float(printed["at"]), time.monotonic() - started  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def stop_agents(state: Path) -> None:
    subprocess.run(
        [PY, "manage.py", "run_embedded", "--stop-agents"],
        cwd=ROOT,
        env=_env(state),
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"first": [], "second": [], "baseline": []}
    for run in range(args.runs):
        state = Path(tempfile.mkdtemp(prefix="inventiv-bench-demo-"))
        try:
            results["first"].append(start(NEW, state))
            results["second"].append(start(NEW, state))
            stop_agents(state)
            results["baseline"].append(start(OLD, state))
        finally:
            stop_agents(state)
        print(f"run {run + 1}/{args.runs}: {json.dumps(results)}", file=sys.stderr)
    base = statistics.median(t for _, t in results["baseline"])
    labels = {
        "first": "first make demo (empty state)",
        "second": "second make demo (reattach)",
        "baseline": "second start, former 3 commands",
    }
    print(f"\nmake demo, medians of {args.runs} runs (load average {os.getloadavg()[0]:.1f})")
    print(f"| {'start':<34} | key printed | first token | vs baseline |")
    print(f"|{'-' * 36}|-------------|-------------|-------------|")
    for name, label in labels.items():
        key = statistics.median(k for k, _ in results[name])
        token = statistics.median(t for _, t in results[name])
        print(f"| {label:<34} | {key:9.2f} s | {token:9.2f} s | {token / base:10.2f}x |")


if __name__ == "__main__":
    main()
