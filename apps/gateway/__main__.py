"""``python -m apps.gateway [--host H] [--port 8002] [--workers N] [--graceful-timeout S]``:
run the standalone gateway on uvicorn with uvloop and httptools, without access logs (metrics
cover that). This is compose's gateway command.

Lifespan is on: startup opens the engine pool and loads the routing table before the first
request; on SIGTERM uvicorn stops accepting, lets requests in flight (streams included) finish
for up to ``--graceful-timeout`` seconds, then runs the shutdown, whose final usage flush hands
every buffered usage record over. Keep the container's stop grace period above that timeout
(compose.yaml: ``stop_grace_period``), or the flush is killed with the process.

HTTP is bounded before authentication (``apps.gateway.server.HttpProtocol``): a request head
over ``--max-head-bytes`` is refused (431), a head not complete within
``--timeout-keep-alive`` seconds too (408); an idle keep-alive connection is closed after as
long; past ``--limit-concurrency`` connections or requests, the answer is 503 ``server_busy``.
The body's deadline is ``GATEWAY_BODY_TIMEOUT_S``.
"""

from __future__ import annotations

import argparse

import uvicorn

from apps.gateway.server import HttpProtocol

# Below compose's stop_grace_period (30 s): the shutdown's usage flush runs after it.
GRACEFUL_TIMEOUT_S = 20
MAX_HEAD_BYTES = 64 * 1024
TIMEOUT_KEEP_ALIVE_S = 5
LIMIT_CONCURRENCY = 4096


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
    parser.add_argument(
        "--max-head-bytes",
        type=int,
        default=MAX_HEAD_BYTES,
        help=f"largest request line + headers, 431 beyond (default {MAX_HEAD_BYTES})",
    )
    parser.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=TIMEOUT_KEEP_ALIVE_S,
        help="seconds for a request's head to arrive (408 beyond) and for an idle keep-alive "
        f"connection to send the next one (default {TIMEOUT_KEEP_ALIVE_S})",
    )
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        default=LIMIT_CONCURRENCY,
        help=f"connections or requests per process, 503 beyond (default {LIMIT_CONCURRENCY})",
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        "apps.gateway.asgi:application",
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http=HttpProtocol,
        h11_max_incomplete_event_size=args.max_head_bytes,
        timeout_keep_alive=args.timeout_keep_alive,
        limit_concurrency=args.limit_concurrency,
        lifespan="on",
        access_log=False,
        # The gateway reads no client address: no X-Forwarded-* middleware around each request.
        proxy_headers=False,
        log_level=args.log_level,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
