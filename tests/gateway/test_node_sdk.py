"""The official Node SDK (``openai`` 7.x, installed from npm by the test setup into a cache
outside the repository) against real gateway and mock-engine processes (issue 17): chat with
``n=2`` and logprobs, a tool call, responses created and streamed, a tool-call round trip.
Skipped, saying why, when Node.js or npm is absent or the package cannot be installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway.conftest import flushed_usage

SCRIPT = Path(__file__).with_name("node") / "sdk_check.mjs"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inventiv-tests"


@pytest.fixture(scope="session")
def node_openai() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are absent: the official Node SDK tests need them")
    where = CACHE / "node-openai-7"
    if not (where / "node_modules" / "openai" / "package.json").exists():
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "openai@7"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            pytest.skip(f"npm could not install openai@7: {done.stderr.strip()[-300:]}")
    return where / "node_modules"


def test_the_node_sdk_drives_every_new_endpoint(
    node_openai, model_code, start_engine, start_gateway, new_key
):
    start_engine(model_code)
    gateway = start_gateway()
    # The script is copied beside the SDK so that Node's ESM resolution finds `openai`.
    script = node_openai.parent / SCRIPT.name
    shutil.copyfile(SCRIPT, script)

    done = subprocess.run(
        ["node", str(script), f"{gateway.url}/v1", new_key()[1], "sales-bot"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["n"] == 2 and got["logprobs"] == 3 and got["chatUsage"] == 6
    assert got["toolName"] == "get_weather"
    assert got["responseText"] and got["responseUsage"] == 4
    assert got["streamText"] == got["streamFinal"] == got["responseText"]
    assert got["roundTrip"]
    records = flushed_usage(6)
    assert [r.endpoint for r in records] == ["chat", "chat"] + ["responses"] * 4
    assert [r.completion_tokens for r in records[2:4]] == [4, 4]
