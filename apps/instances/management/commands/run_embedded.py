"""Run the whole platform in one process: web + gateway (uvicorn), a Celery worker (threads)
and beat, on whatever settings say (the embedded default: SQLite, in-memory broker/layer).

``--demo`` (what ``make demo`` runs) does the demo's whole start in this one Python process:
migrate only when a migration is unapplied, the demo's admin, model code and key
(``demo_setup``), the banner, and it leaves the demo's local agent running on exit so that the
next start reattaches to it (``make demo-stop`` stops it)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import threading
import time
from typing import Any

import uvicorn
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from apps.instances.management.commands.demo_setup import (
    demo_banner,
    demo_ensure,
    demo_remember_agent_api_url,
)
from apps.instances.orchestrator import local_fleet_reattach, local_fleet_shutdown
from apps.instances.tasks import reconcile_task
from inventiv.celery import app as celery_app

logger = logging.getLogger(__name__)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _all_recorded() -> bool:
    """Whether every migration file of every app is recorded as applied: one query and a
    directory listing per app, without importing a migration (a miss, or anything unusual,
    answers False and the full plan decides)."""
    recorder = MigrationRecorder(connection)
    if not recorder.has_table():
        return False
    applied = set(recorder.applied_migrations())
    for config in apps.get_app_configs():
        module, _ = MigrationLoader.migrations_module(config.label)
        spec = importlib.util.find_spec(module) if module else None
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            for entry in os.scandir(location):
                name, ext = os.path.splitext(entry.name)
                if ext == ".py" and name[0] not in "_~" and (config.label, name) not in applied:
                    return False
    return True


def _migrate_if_needed() -> bool:
    """``migrate`` only when a migration is unapplied: every file recorded (a few ms) or else
    the executor's plan (loading every migration, ~0.1-0.5 s) decide; a ``migrate`` with
    nothing to do costs about a second. Returns whether it migrated."""
    if _all_recorded():
        return False
    executor = MigrationExecutor(connection)
    if not executor.migration_plan(executor.loader.graph.leaf_nodes()):
        return False
    call_command("migrate", verbosity=0)
    return True


class _Background:
    """The in-process Celery worker (threads) and beat, started once the server listens."""

    def __init__(self, *, concurrency: int, beat: bool) -> None:
        self.concurrency = concurrency
        self.with_beat = beat
        self.worker: Any = None
        self.beat: Any = None
        self.lock = threading.Lock()
        self.stopped = False

    def start_when_listening(self, server: uvicorn.Server) -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        with self.lock:
            if self.stopped or server.should_exit:
                return
            self.worker = celery_app.WorkController(
                pool_cls="threads",
                concurrency=self.concurrency,
                loglevel="INFO",
                without_heartbeat=True,
                without_mingle=True,
                without_gossip=True,
            )
            threading.Thread(target=self.worker.start, name="celery-worker", daemon=True).start()
            # Converge at once: commands sent before this process existed (e.g. by demo_setup)
            # went to another process's in-memory broker.
            reconcile_task.delay()
            if self.with_beat:
                from celery.beat import EmbeddedService  # after the server listens

                self.beat = EmbeddedService(
                    celery_app, thread=True, scheduler_cls="celery.beat:Scheduler"
                )
                self.beat.start()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            if self.beat is not None:
                self.beat.stop()
            if self.worker is not None:
                self.worker.stop(in_sighandler=False)


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
        parser.add_argument(
            "--demo",
            action="store_true",
            help="migrate if needed, prepare the demo (demo_setup), print its banner, and keep "
            "its agents on exit (the next start reattaches)",
        )
        parser.add_argument(
            "--stop-agents",
            action="store_true",
            help="stop the local instances left running (--keep-agents, --demo) and exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.EMBEDDED and settings.CELERY_BROKER_URL.startswith("memory"):
            raise CommandError("inconsistent settings: memory broker outside the embedded mode")
        if not os.environ.get("INVENTIV_PUBLIC_URL"):
            settings.PUBLIC_URL = f"http://{options['host']}:{options['port']}"
        if not os.environ.get("INVENTIV_AGENT_API_URL"):
            settings.AGENT_API_URL = settings.PUBLIC_URL
        if options["stop_agents"]:
            stopped = local_fleet_shutdown(reason="stopped by run_embedded --stop-agents")
            self.stdout.write(f"Stopped {stopped} local instance(s).")
            return
        keep_agents = options["keep_agents"] or options["demo"]
        if options["demo"]:
            _migrate_if_needed()
            password, api_key = demo_ensure()
            previous = demo_remember_agent_api_url(settings.AGENT_API_URL)
            if previous not in (None, settings.AGENT_API_URL):
                # The kept agents call the former address: fresh ones, at the new address.
                local_fleet_shutdown(reason=f"the demo moved from {previous}")
            for line in demo_banner(settings.PUBLIC_URL, password, api_key):
                self.stdout.write(line)
            self.stdout.write(
                "  Ctrl-C stops the platform; the demo's agent keeps running so that the next "
                "`make demo` answers at once (`make demo-stop` stops it)."
            )
            self.stdout.flush()
        # Agents left running by the previous start (--keep-agents) are reattached; instances
        # whose agent is gone (a reboot) are replaced at once, not after the heartbeat deadline.
        reattached, replaced = local_fleet_reattach(reason="its agent did not survive the restart")
        if reattached or replaced:
            logger.info("local instances: %d reattached, %d replaced", reattached, replaced)
        # The ASGI application first, then the server; the worker and beat start once it
        # listens: importing the app (the gateway, aiohttp, Channels) is most of the time
        # between the banner and the first answer, and a reattached agent answers without them.
        from inventiv.asgi import application

        server = uvicorn.Server(
            uvicorn.Config(
                application,
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
        )
        background = _Background(concurrency=options["concurrency"], beat=not options["no_beat"])
        threading.Thread(
            target=background.start_when_listening, args=(server,), name="embedded-start"
        ).start()
        # uvicorn re-raises SIGTERM/SIGINT once it has shut down; make SIGTERM exit through the
        # ``finally`` below (as Ctrl-C does) so that local instances are stopped.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, as uvicorn.run does
                server.run()
            if not server.started:
                raise CommandError(f"the server could not start on port {options['port']}")
        finally:
            server.should_exit = True
            background.stop()
            if not keep_agents:
                stopped = local_fleet_shutdown(reason="the embedded platform stopped")
                self.stdout.write(f"Stopped {stopped} local instance(s).")
