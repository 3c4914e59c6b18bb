"""``python -m agent``: command line and logging setup.

Every option falls back to an environment variable, so cloud-init can configure the agent
without putting the bootstrap token on a command line. Exit codes: 0 normal stop, 2 usage error,
3 registration refused (bad or expired bootstrap token, or neither a token nor a stored
credential).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from agent.runner import AgentConfig, run_agent

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent",
        description="Inventiv agent: registers with the control plane and supervises one engine.",
    )
    p.add_argument(
        "--control-plane",
        metavar="URL",
        default=os.environ.get("INVENTIV_CONTROL_PLANE_URL"),
        help="control plane base URL (env INVENTIV_CONTROL_PLANE_URL)",
    )
    p.add_argument(
        "--bootstrap-token",
        metavar="TOKEN",
        default=os.environ.get("INVENTIV_BOOTSTRAP_TOKEN"),
        help="one-time bootstrap token; prefer the env var INVENTIV_BOOTSTRAP_TOKEN",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        default=os.environ.get("INVENTIV_AGENT_STATE_DIR") or None,
        help="keep the instance credential in DIR/credential.json so a restarted agent resumes "
        "without a new bootstrap token (env INVENTIV_AGENT_STATE_DIR; default: not kept)",
    )
    p.add_argument(
        "--advertise-host",
        metavar="HOST",
        default=os.environ.get("INVENTIV_ADVERTISE_HOST") or "127.0.0.1",
        help="address at which this machine's engine is reachable "
        "(env INVENTIV_ADVERTISE_HOST, default 127.0.0.1)",
    )
    p.add_argument(
        "--exit-after-offline",
        metavar="SECONDS",
        type=float,
        default=float(os.environ.get("INVENTIV_AGENT_EXIT_AFTER_OFFLINE_S") or 0) or None,
        help="stop the engine and exit once the control plane has been unreachable this long "
        "(env INVENTIV_AGENT_EXIT_AFTER_OFFLINE_S; default: never)",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=(os.environ.get("INVENTIV_LOG_LEVEL") or "info").lower(),
        help="log level (env INVENTIV_LOG_LEVEL, default info)",
    )
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO; heartbeats would drown everything else.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.control_plane:
        parser.error("--control-plane (or INVENTIV_CONTROL_PLANE_URL) is required")
    if not args.bootstrap_token and not args.state_dir:
        parser.error(
            "--bootstrap-token (or INVENTIV_BOOTSTRAP_TOKEN) is required without --state-dir"
        )
    if args.log_level not in LOG_LEVELS:
        parser.error(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    setup_logging(args.log_level)
    config = AgentConfig(
        control_plane_url=args.control_plane,
        bootstrap_token=args.bootstrap_token or None,
        advertise_host=args.advertise_host,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        offline_exit_s=args.exit_after_offline,
    )
    return run_loop(run_agent(config))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the agent's event loop: uvloop (installed with uvicorn[standard]; its TLS, which the
    sealed front speaks, costs less CPU than asyncio's), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a machine without uvicorn's extras
        return asyncio.run(main)
    return uvloop.run(main)
