"""Run the whole platform in one process: web + gateway (uvicorn), a Celery worker (threads)
and beat, on whatever settings say (the embedded default: SQLite, in-memory broker/layer)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import uvicorn
from celery.beat import EmbeddedService
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.instances.orchestrator import local_fleet_shutdown
from apps.instances.tasks import reconcile_task
from inventiv.celery import app as celery_app

logger = logging.getLogger(__name__)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


class Command(BaseCommand):
    help = "Run web, gateway, worker and beat in one process (the embedded mode)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument("--no-beat", action="store_true")
        parser.add_argument(
            "--keep-agents",
            action="store_true",
            help="leave local agents running on exit (they reconnect on the next start)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.EMBEDDED and settings.CELERY_BROKER_URL.startswith("memory"):
            raise CommandError("inconsistent settings: memory broker outside the embedded mode")
        if not os.environ.get("INVENTIV_PUBLIC_URL"):
            settings.PUBLIC_URL = f"http://{options['host']}:{options['port']}"
        if not os.environ.get("INVENTIV_AGENT_API_URL"):
            settings.AGENT_API_URL = settings.PUBLIC_URL
        worker = celery_app.WorkController(
            pool_cls="threads",
            concurrency=options["concurrency"],
            loglevel="INFO",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        threading.Thread(target=worker.start, name="celery-worker", daemon=True).start()
        # Converge at once: commands sent before this process existed (e.g. by demo_setup)
        # went to another process's in-memory broker.
        reconcile_task.delay()
        beat = None
        if not options["no_beat"]:
            beat = EmbeddedService(celery_app, thread=True, scheduler_cls="celery.beat:Scheduler")
            beat.start()
        # uvicorn re-raises SIGTERM/SIGINT once it has shut down; make SIGTERM exit through the
        # ``finally`` below (as Ctrl-C does) so that local instances are stopped.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            uvicorn.run(
                "inventiv.asgi:application",
                host=options["host"],
                port=options["port"],
                lifespan="off",
                log_level="warning",
                timeout_graceful_shutdown=5,
                # HTTP bounded as in compose.yaml's web role (apps/gateway/server.py).
                http="apps.gateway.server:HttpProtocol",
                h11_max_incomplete_event_size=64 * 1024,
                timeout_keep_alive=5,
                limit_concurrency=1024,
            )
        finally:
            if beat is not None:
                beat.stop()
            worker.stop(in_sighandler=False)
            if not options["keep_agents"]:
                stopped = local_fleet_shutdown(reason="the embedded platform stopped")
                self.stdout.write(f"Stopped {stopped} local instance(s).")
