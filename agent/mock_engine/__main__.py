"""``python -m agent.mock_engine``: serve the mock engine on uvicorn (uvloop + httptools).

The API key is read from ``MOCK_ENGINE_API_KEY`` (never argv). Exits 2 if it is missing.
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from agent.mock_engine.app import MockConfig, MockEngine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent.mock_engine", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--token-rate", type=float, default=0.0)
    p.add_argument("--default-max-tokens", type=int, default=16)
    p.add_argument("--startup-delay-s", type=float, default=0.0)
    p.add_argument("--embedding-dim", type=int, default=8)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--task", choices=("chat", "completion", "embedding"), default="chat")
    p.add_argument("--flavor", choices=("vllm", "tgi"), default="vllm")
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api_key = os.environ.get("MOCK_ENGINE_API_KEY", "")
    if not api_key:
        print("mock_engine: MOCK_ENGINE_API_KEY is required", file=sys.stderr)
        return 2
    config = MockConfig(
        served_model_name=args.served_model_name,
        model_id=args.model_id,
        api_key=api_key,
        token_rate=args.token_rate,
        default_max_tokens=args.default_max_tokens,
        startup_delay_s=args.startup_delay_s,
        embedding_dim=args.embedding_dim,
        max_model_len=args.max_model_len,
        task=args.task,
        flavor=args.flavor,
    )
    uvicorn.run(
        MockEngine(config),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=2,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
