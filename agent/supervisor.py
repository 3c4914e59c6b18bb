"""Supervise one engine process: start, probe, restart on crash with backoff, stop.

Guarantees:

* At most one engine process exists at a time; :meth:`EngineSupervisor.serve` with a different
  spec stops the old one (SIGTERM, then SIGKILL to its process group) before starting the new.
* A crash is restarted after an exponential backoff (``backoff_initial_s`` doubling up to
  ``backoff_max_s``, reset once the engine stayed READY for ``backoff_reset_after_s``). A
  missing executable or invalid engine arguments are reported as ``ENGINE_DOWN`` with
  ``last_error``, never raised.
* :meth:`EngineSupervisor.stop` and :meth:`EngineSupervisor.kill_now` leave no process behind:
  an engine that ignores SIGTERM is SIGKILLed after ``stop_timeout_s``, at once if the stop is
  cancelled, and ``kill_now`` reaches it while a stop is waiting on it.

The phase is STARTING until the first readiness of a spec, READY while health, model listing and
warm-up all hold, ENGINE_DOWN after a crash, a failed start, or sustained failed probes, until
the engine is READY again. ``on_change`` is called after every probe or process event; the
caller decides whether the change matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.engines import build_command
from agent.front import EngineFront, loopback_port
from agent.probe import EngineProbe
from agent.process import describe_exit, kill_group, spawn, terminate_group
from agent.protocol import AgentState, EngineMetrics, EngineSpec, EngineStatus
from agent.tls_identity import TlsIdentity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorTimings:
    startup_probe_interval_s: float = 0.25
    ready_probe_interval_s: float = 1.0
    failures_before_down: int = 3  # consecutive failed probes of a READY engine
    unhealthy_restart_after_s: float = 60.0  # then the hung engine is killed and restarted
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_reset_after_s: float = 60.0
    stop_timeout_s: float = 10.0


class EngineSupervisor:
    def __init__(
        self,
        *,
        on_change: Callable[[], None],
        timings: SupervisorTimings | None = None,
        tls: TlsIdentity | None = None,
    ) -> None:
        self._on_change = on_change
        self.timings = timings or SupervisorTimings()
        self.tls = tls  # the certificate of the sealed front (needed by a sealed spec)
        self.front: EngineFront | None = None
        self._spec: EngineSpec | None = None
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reset_status()

    # -- read side -------------------------------------------------------------------------

    @property
    def spec(self) -> EngineSpec | None:
        return self._spec

    @property
    def phase(self) -> AgentState:
        return self._phase

    @property
    def process_alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def metrics(self) -> EngineMetrics | None:
        return self._metrics

    def status(self) -> EngineStatus:
        return EngineStatus(
            healthy=self._healthy,
            model_listed=self._listed,
            warmed_up=self._warmed,
            restarts=self._restarts,
            pid=self._proc.pid if self.process_alive and self._proc else None,
            last_error=self._last_error,
            task=self._task_served,
        )

    # -- write side ------------------------------------------------------------------------

    async def serve(self, spec: EngineSpec) -> None:
        """Run ``spec``. Idempotent: the same spec again is a no-op; a new one restarts."""
        if spec == self._spec and self._task is not None:
            return
        if self._spec is not None:
            log.info("engine spec changed; restarting the engine")
        await self._stop_current()
        self._spec = spec
        self._reset_status()
        self._task = asyncio.create_task(self._supervise(spec), name="engine-supervisor")
        self._task.add_done_callback(self._task_done)
        self._on_change()

    async def stop(self) -> None:
        """Stop the engine (SIGTERM, wait ``stop_timeout_s``, SIGKILL). Idempotent."""
        await self._stop_current()
        self._spec = None
        self._on_change()

    def kill_now(self) -> None:
        """Synchronous last resort for exit paths: SIGKILL the engine's process group."""
        if self._proc is not None:
            kill_group(self._proc.pid)

    # -- internals -------------------------------------------------------------------------

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug, not an engine failure: report it instead of silently freezing the state.
        log.error("engine supervisor crashed", exc_info=task.exception())
        self.kill_now()
        self._mark_down(f"agent supervisor error: {task.exception()!r}")

    def _reset_status(self) -> None:
        self._phase = AgentState.STARTING
        self._healthy = self._listed = self._warmed = False
        self._restarts = 0
        self._last_error: str | None = None
        self._metrics: EngineMetrics | None = None
        self._ready_since: float | None = None
        self._task_served = ""

    async def _stop_current(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        proc = self._proc
        if proc is not None:
            log.info("stopping engine pid %d", proc.pid)
            try:
                await terminate_group(proc, self.timings.stop_timeout_s)
            finally:
                # Kept until it is dead, so that ``kill_now`` still reaches an engine that
                # ignores SIGTERM while its grace period runs.
                self._proc = None

    def _mark_down(self, error: str) -> None:
        self._phase = AgentState.ENGINE_DOWN
        self._healthy = self._listed = self._warmed = False
        self._metrics = None
        self._last_error = error
        self._on_change()

    async def _supervise(self, spec: EngineSpec) -> None:
        try:
            await self._supervise_engine(spec)
        finally:
            front, self.front = self.front, None
            if front is not None:
                await front.stop()

    async def _open_front(self, spec: EngineSpec, engine_port: int) -> bool:
        """Serve ``spec.host:spec.port`` (sealed) before the engine on ``engine_port`` starts,
        or point the running front at a restarted engine's new port. False (and ENGINE_DOWN)
        when it cannot listen."""
        if self.front is not None:
            self.front.app.retarget(engine_port)
            return True
        if self.tls is None:
            self._mark_down("sealed engine, but the agent has no TLS identity")
            return False
        front = EngineFront(
            host=spec.host,
            port=spec.port,
            api_key=spec.api_key,
            upstream_port=engine_port,
            tls=self.tls,
        )
        try:
            await front.start()
        except OSError as exc:
            await front.stop()
            log.error("cannot listen on %s:%d: %s", spec.host, spec.port, exc)
            self._mark_down(f"sealed front cannot listen on {spec.host}:{spec.port}: {exc}")
            return False
        self.front = front
        return True

    async def _supervise_engine(self, spec: EngineSpec) -> None:
        t = self.timings
        backoff = t.backoff_initial_s
        sealed = spec
        while True:
            if spec.sealed:
                # The engine on loopback only, on a port of ours; the front takes the address.
                sealed = spec.model_copy(update={"host": "127.0.0.1", "port": loopback_port()})
                if not await self._open_front(spec, sealed.port):
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, t.backoff_max_s)
                    continue
            try:
                command = build_command(sealed)
            except ValueError as exc:
                log.error("cannot start engine: %s", exc)
                self._mark_down(f"invalid engine spec: {exc}")
                return  # nothing will change until the control plane sends another spec
            try:
                proc = await spawn(command)
            except OSError as exc:
                log.error("cannot start engine %r: %s", command.argv[0], exc)
                self._mark_down(f"cannot start {command.argv[0]!r}: {exc.strerror or exc}")
            else:
                self._proc = proc
                log.info("engine started, pid %d: %s", proc.pid, " ".join(command.argv))
                self._on_change()
                probe = EngineProbe(sealed)
                probing = asyncio.create_task(self._probe_loop(probe, proc), name="engine-probe")
                try:
                    returncode = await proc.wait()
                finally:
                    probing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probing
                    await probe.aclose()
                kill_group(proc.pid)  # stragglers (workers) of the dead leader
                self._proc = None
                reason = describe_exit(returncode)
                log.warning("%s", reason)
                self._mark_down(reason)
                ready_since = self._ready_since
                if ready_since is not None and time.monotonic() - ready_since >= (
                    t.backoff_reset_after_s
                ):
                    backoff = t.backoff_initial_s
                self._ready_since = None
            log.info("restarting the engine in %.1fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, t.backoff_max_s)
            self._restarts += 1

    async def _probe_loop(self, probe: EngineProbe, proc: asyncio.subprocess.Process) -> None:
        t = self.timings
        warmed = False
        failures = 0
        failing_since: float | None = None
        while proc.returncode is None:
            healthy = await probe.health()
            listed = healthy and await probe.model_listed()
            if listed and not warmed:
                warmed = await probe.warm_up()
                self._task_served = probe.task
            metrics = await probe.metrics() if healthy else None
            if proc.returncode is not None:
                return
            ready = healthy and listed and warmed
            self._healthy, self._listed, self._warmed = healthy, listed, warmed
            self._metrics = metrics
            if ready:
                failures, failing_since = 0, None
                if self._phase != AgentState.READY:
                    log.info("engine is ready")
                    self._ready_since = time.monotonic()
                self._phase = AgentState.READY
                self._last_error = None
            else:
                self._last_error = probe.last_error
                if self._phase == AgentState.READY:
                    failures += 1
                    failing_since = failing_since or time.monotonic()
                    if failures >= t.failures_before_down:
                        log.warning("engine unhealthy: %s", probe.last_error)
                        self._phase = AgentState.ENGINE_DOWN
                        self._ready_since = None
                elif failing_since is not None and (
                    time.monotonic() - failing_since >= t.unhealthy_restart_after_s
                ):
                    log.error("engine unhealthy for %.0fs; killing it", t.unhealthy_restart_after_s)
                    await terminate_group(proc, t.stop_timeout_s)
                    return
            self._on_change()
            interval = t.ready_probe_interval_s if ready else t.startup_probe_interval_s
            await asyncio.sleep(interval)
