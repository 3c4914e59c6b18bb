"""``python -m apps.gateway [--host H] [--port 8002] [--workers N] [--graceful-timeout S]``:
run the standalone gateway on uvicorn with uvloop and httptools, without access logs (metrics
cover that). This is compose's gateway command.

Lifespan is on: startup opens the engine pool and loads the routing table before the first
request; on SIGTERM uvicorn stops accepting, lets requests in flight (streams included) finish
for up to ``--graceful-timeout`` seconds, then runs the shutdown, whose final usage flush hands
every buffered usage record over. Keep the container's stop grace period above that timeout
(compose.yaml: ``stop_grace_period``), or the flush is killed with the process.
"""

from __future__ import annotations

import argparse

import uvicorn

# Below compose's stop_grace_period (30 s): the shutdown's usage flush runs after it.
GRACEFUL_TIMEOUT_S = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.gateway", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--graceful-timeout",
        type=int,
        default=GRACEFUL_TIMEOUT_S,
        help=f"seconds requests in flight get at shutdown (default {GRACEFUL_TIMEOUT_S})",
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        "apps.gateway.asgi:application",
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=args.log_level,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
