"""TGI as the agent runs it, and readiness that fits the model's task: a real agent drives
``text-generation-launcher`` (the mock engine behind TGI's real command line, on ``PATH``),
and mock models that serve only completions or only embeddings."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import httpx

from agent.metrics import parse_engine_metrics
from tests.agent.conftest import ENGINE_KEY, mock_spec
from tests.agent.fake_control_plane import FakeControlPlane
from tests.processes import free_port


def _launcher_on_path(tmp_path: Path) -> str:
    """A ``text-generation-launcher`` that runs agent.mock_engine.tgi_launcher; the PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "text-generation-launcher"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m agent.mock_engine.tgi_launcher "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def _tgi_desired(port: int, **engine_args: Any) -> dict[str, Any]:
    spec = mock_spec(port, **engine_args)
    spec.update(engine="tgi", model_id="org/tiny-model", served_model_name="tiny")
    return {"action": "serve", "engine": spec}


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_the_agent_runs_tgi_to_ready_with_its_metrics_in_heartbeats(
    tmp_path: Path, control_plane: FakeControlPlane, start_agent: Any
) -> None:
    # Given a TGI spec with a context of 2048 tokens sharded over 2 GPUs
    port = free_port()
    control_plane.set_desired(_tgi_desired(port, max_model_len=2048, tensor_parallel_size=2))
    run = start_agent(PATH=_launcher_on_path(tmp_path), API_KEY="the-agent-s-own")
    # Then the launcher got TGI's flags and the engine became ready (health, /info, warm-up)
    _, ready = run.wait_state("ready")
    assert ready["engine"]["task"] == "chat"
    argv = _cmdline(ready["engine"]["pid"])
    assert argv[argv.index("--num-shard") + 1] == "2"
    assert argv[argv.index("--max-total-tokens") + 1] == "2048"
    assert argv[argv.index("--max-input-tokens") + 1] == "2047"
    assert ENGINE_KEY not in " ".join(argv)
    # And it serves with the engine secret (its API_KEY), not the agent's environment's
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {ENGINE_KEY}"},
        timeout=10,
    ) as engine:
        r = engine.post("/generate", json={"inputs": "a b c", "parameters": {"max_new_tokens": 4}})
        assert r.status_code == 200 and r.json()["generated_text"]
        r = engine.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
        )
        assert r.status_code == 200
        assert "tgi_queue_size" in engine.get("/metrics").text
    # And TGI's metric names reach the heartbeat's fields (warm-up 1 + 4 + 5 tokens)
    control_plane.wait_heartbeat(
        lambda b: (b["metrics"] or {}).get("generation_tokens_total", 0) >= 10,
        message="TGI's generated tokens in heartbeats",
    )


def test_a_base_model_warms_up_with_a_completion(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    control_plane.set_desired(
        {"action": "serve", "engine": mock_spec(free_port(), task="completion")}
    )
    run = start_agent()
    _, ready = run.wait_state("ready")
    assert ready["engine"]["task"] == "completion" and ready["engine"]["warmed_up"]


def test_an_embedding_model_warms_up_with_an_embedding(
    control_plane: FakeControlPlane, start_agent: Any
) -> None:
    control_plane.set_desired(
        {"action": "serve", "engine": mock_spec(free_port(), task="embedding")}
    )
    run = start_agent()
    _, ready = run.wait_state("ready")
    assert ready["engine"]["task"] == "embedding"


def test_tgi_metrics_map_onto_the_heartbeat_fields() -> None:
    text = (
        "# TYPE tgi_queue_size gauge\ntgi_queue_size 3\n"
        "tgi_batch_current_size 5\n"
        'tgi_request_input_length_bucket{le="10"} 2\n'
        "tgi_request_input_length_sum 120\ntgi_request_input_length_count 4\n"
        "tgi_request_generated_tokens_sum 77\n"
        "vllm:num_requests_running 99\n"
    )
    m = parse_engine_metrics(text, "tgi")
    assert (m.requests_waiting, m.requests_running) == (3, 5)
    assert (m.prompt_tokens_total, m.generation_tokens_total) == (120, 77)
    assert m.kv_cache_usage == 0
    assert parse_engine_metrics(text).requests_running == 99  # vLLM's names for vLLM
