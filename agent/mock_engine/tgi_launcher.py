"""``python -m agent.mock_engine.tgi_launcher``: the mock engine behind TGI's command line.

It accepts what ``text-generation-launcher`` accepts for the flags the agent passes (the same
names, the same value sets: ``--dtype`` float16/bfloat16, ``--quantize`` TGI's methods, and
``--max-input-tokens`` below ``--max-total-tokens``), reads the engine secret from ``API_KEY``
as TGI does, and serves the mock engine in its TGI flavor (TGI's metrics, ``/info``,
``/generate``). Tests put it on ``PATH`` as ``text-generation-launcher`` so that the agent's
real TGI command line is parsed and served end to end. Exits 2 on a flag TGI would refuse.
"""

from __future__ import annotations

import argparse
import os
import sys

from agent.engine_args import TGI_QUANTIZATIONS
from agent.mock_engine.__main__ import main as mock_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="text-generation-launcher", description=__doc__)
    p.add_argument("--model-id", required=True)
    p.add_argument("--hostname", default="0.0.0.0")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--num-shard", type=int)
    p.add_argument("--max-input-tokens", type=int)
    p.add_argument("--max-total-tokens", type=int)
    p.add_argument("--dtype", choices=("float16", "bfloat16"))
    p.add_argument("--quantize", choices=TGI_QUANTIZATIONS)
    p.add_argument("--kv-cache-dtype", choices=("fp8_e4m3fn", "fp8_e5m2"))
    p.add_argument("--max-concurrent-requests", type=int)
    p.add_argument("--max-batch-prefill-tokens", type=int)
    p.add_argument("--cuda-memory-fraction", type=float)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--usage-stats", choices=("on", "off", "no-stack"), default="on")
    args = p.parse_args(argv)
    if args.dtype and args.quantize:
        p.error("--dtype cannot be used with --quantize")
    total = args.max_total_tokens or 4096
    if args.max_input_tokens is not None and args.max_input_tokens >= total:
        p.error("--max-input-tokens must be < --max-total-tokens")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    key = os.environ.get("API_KEY", "")
    if not key:
        print("tgi_launcher: API_KEY is required (the agent always sets it)", file=sys.stderr)
        return 2
    os.environ["MOCK_ENGINE_API_KEY"] = key
    mock_argv = [
        "--host", args.hostname, "--port", str(args.port),
        "--served-model-name", args.model_id, "--model-id", args.model_id,
        "--max-model-len", str(args.max_total_tokens or 4096), "--flavor", "tgi",
        "--task", os.environ.get("MOCK_TGI_TASK", "chat"),
    ]  # fmt: skip
    return mock_main(mock_argv)


if __name__ == "__main__":
    raise SystemExit(main())
