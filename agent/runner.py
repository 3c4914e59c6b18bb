"""The agent's main loop: register, follow the desired state, heartbeat, shut down cleanly.

Guarantees:

* Registration retries transient failures (network, timeouts, 5xx, 408/429) with exponential
  backoff forever (until a signal); a refusal (400/401/403, other 4xx) returns
  :data:`EXIT_REJECTED`.
* Heartbeats go out every ``heartbeat_interval_s`` and immediately when the reported state
  changes. Network errors keep the engine serving; a 401/403 stops the engine and returns
  :data:`EXIT_OK`.
* desired=stop, SIGTERM and SIGINT stop the engine (SIGTERM to its process group, SIGKILL after
  ``stop_timeout_s``), send a best-effort STOPPING heartbeat, and return :data:`EXIT_OK`.
* On every exit path, including an unexpected exception, the engine's process group is killed.
* Neither the bootstrap token, the credential, nor the engine API key is ever logged.

With a state directory (:mod:`agent.state`), a successful registration is saved to
``credential.json`` and a restarted agent resumes from it instead of spending its one-time
bootstrap token again: its first heartbeat carries the desired state. If the control plane
refuses the stored credential (401/403) the file is deleted and the agent registers with its
bootstrap token if it has one (exit 3 if that is refused too), otherwise it returns
:data:`EXIT_OK`. desired=stop and a 401/403 during the heartbeat loop delete the file, so a
reboot does not bring back a terminated instance; SIGTERM/SIGINT keep it (a reboot stops the
agent with SIGTERM, and the instance must resume afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.control_plane import (
    ControlPlaneClient,
    ControlPlaneError,
    ControlPlaneRejected,
    ControlPlaneUnavailable,
)
from agent.gpus import detect_gpus
from agent.protocol import (
    AgentState,
    Desired,
    DesiredAction,
    EngineStatus,
    GpuInfo,
    Heartbeat,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)
from agent.state import CredentialStore
from agent.supervisor import EngineSupervisor, SupervisorTimings
from agent.tls_identity import TlsIdentity, load_or_create
from agent.tunnel import TunnelManager

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REJECTED = 3

_MIN_INTERVAL_S = 0.05


@dataclass(frozen=True)
class AgentConfig:
    control_plane_url: str
    bootstrap_token: str | None
    advertise_host: str = "127.0.0.1"
    state_dir: Path | None = None  # no persistence unless given
    register_backoff_initial_s: float = 1.0
    register_backoff_max_s: float = 30.0
    final_heartbeat_timeout_s: float = 3.0
    stop_timeout_s: float = 10.0
    # Stop the engine and exit once heartbeats have failed this long in a row (None: never, as
    # a cloud machine must keep serving through a control-plane outage). The local provider
    # sets it, so an agent `make demo` left running does not outlive the demo for good.
    offline_exit_s: float | None = None


def supervisor_timings(heartbeat_interval_s: float, stop_timeout_s: float) -> SupervisorTimings:
    """Probe a READY engine twice per heartbeat interval (between 0.1 s and 2 s)."""
    ready = min(2.0, max(0.1, heartbeat_interval_s / 2))
    return SupervisorTimings(
        startup_probe_interval_s=min(0.25, ready),
        ready_probe_interval_s=ready,
        stop_timeout_s=stop_timeout_s,
    )


class Agent:
    def __init__(self, config: AgentConfig, client: ControlPlaneClient) -> None:
        self.config = config
        self.client = client
        self.supervisor: EngineSupervisor | None = None
        self.shutdown = asyncio.Event()
        self._wake = asyncio.Event()
        self._action: DesiredAction | None = None
        self._stopping = False
        self._last_sent_state: AgentState | None = None
        self._instance_id = ""
        self._credential = ""
        self._interval = 10.0
        self._gpus: list[GpuInfo] = []
        self.tunnels = TunnelManager()  # to the gateways, when the desired state lists them
        self.tls: TlsIdentity | None = None  # the sealed front's certificate (run() makes it)
        self._store = (
            CredentialStore(config.state_dir, config.control_plane_url)
            if config.state_dir is not None
            else None
        )

    # -- state -----------------------------------------------------------------------------

    def state(self) -> AgentState:
        sup = self.supervisor
        if self._stopping or self._action == DesiredAction.STOP:
            return AgentState.STOPPING
        if sup is None:
            return AgentState.STARTING
        if self._action == DesiredAction.DRAIN:
            if not sup.process_alive:
                return AgentState.DRAINED
            metrics = sup.metrics
            if metrics is None:  # cannot see in-flight work: only a READY engine may have some
                return AgentState.DRAINING if sup.phase == AgentState.READY else AgentState.DRAINED
            in_flight = metrics.requests_running + metrics.requests_waiting
            return AgentState.DRAINING if in_flight > 0 else AgentState.DRAINED
        return sup.phase

    def _stop_desired(self) -> bool:
        return self._action == DesiredAction.STOP

    def _on_engine_change(self) -> None:
        if self.state() != self._last_sent_state:
            self._wake.set()

    def _heartbeat(self, state: AgentState) -> Heartbeat:
        sup = self.supervisor
        return Heartbeat(
            instance_id=self._instance_id,
            state=state,
            engine=sup.status() if sup is not None else EngineStatus(),
            metrics=sup.metrics if sup is not None else None,
            gpus=self._gpus,
            tls_fingerprint=self.tls.fingerprint if self.tls is not None else "",
        )

    # -- flow ------------------------------------------------------------------------------

    async def run(self) -> int:
        self._gpus = await asyncio.to_thread(detect_gpus)
        if self.tls is None:
            self.tls = await asyncio.to_thread(
                load_or_create, self.config.state_dir, hosts=[self.config.advertise_host]
            )
            log.info("TLS front certificate sha256 %s", self.tls.fingerprint)
        stored = self._store.load() if self._store is not None else None
        if stored is not None:
            self._instance_id = stored.instance_id
            self._credential = stored.credential
            log.info("resuming as instance %s with the stored credential", stored.instance_id)
            resumed = await self._resume()
            if isinstance(resumed, int):
                return resumed
            if resumed is not None:
                return await self._start(resumed.heartbeat_interval_s, resumed.desired)
            self._forget_credential()
            self._instance_id = self._credential = ""
            if not self.config.bootstrap_token:
                log.error("the stored credential was refused and there is no bootstrap token")
                return EXIT_OK
            log.info("the stored credential was refused; registering with the bootstrap token")
        elif not self.config.bootstrap_token:
            log.error("no stored credential and no bootstrap token: cannot register")
            return EXIT_REJECTED
        registered = await self._register(self.config.bootstrap_token)
        if isinstance(registered, int):
            return registered
        self._instance_id = registered.instance_id
        self._credential = registered.credential
        log.info("registered as instance %s", registered.instance_id)
        self._save_credential()
        return await self._start(registered.heartbeat_interval_s, registered.desired)

    async def _start(self, interval_s: float, desired: Desired) -> int:
        self._interval = max(_MIN_INTERVAL_S, interval_s)
        log.info("heartbeat every %.2fs", self._interval)
        self.supervisor = EngineSupervisor(
            on_change=self._on_engine_change,
            timings=supervisor_timings(self._interval, self.config.stop_timeout_s),
            tls=self.tls,
        )
        await self._apply(desired)
        return await self._heartbeat_loop()

    # -- stored credential ------------------------------------------------------------------

    def _save_credential(self) -> None:
        if self._store is None:
            return
        try:
            self._store.save(self._instance_id, self._credential)
        except OSError as exc:  # keep serving; only a restart would need the file
            log.error("cannot save the credential to %s: %s", self._store.path, exc)
        else:
            log.info("saved the credential to %s", self._store.path)

    def _forget_credential(self) -> None:
        if self._store is None:
            return
        try:
            self._store.delete()
        except OSError as exc:
            log.error("cannot delete %s: %s", self._store.path, exc)
        else:
            log.info("deleted the stored credential %s", self._store.path)

    async def _sleep_or_shutdown(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.shutdown.wait(), seconds)

    async def _resume(self) -> HeartbeatResponse | int | None:
        """First heartbeat with the stored credential (no engine yet): its answer, None if the
        credential was refused (401/403), or :data:`EXIT_OK` on a signal. Anything else is
        retried with the registration backoff."""
        backoff = self.config.register_backoff_initial_s
        while not self.shutdown.is_set():
            state = self.state()
            self._last_sent_state = state
            try:
                return await self.client.heartbeat(self._credential, self._heartbeat(state))
            except ControlPlaneRejected as exc:
                if exc.status in (401, 403):
                    log.error("the control plane refused the stored credential (%s)", exc)
                    return None
                log.warning("heartbeat refused (%s); retrying in %.1fs", exc, backoff)
            except ControlPlaneUnavailable as exc:
                log.warning("heartbeat failed (%s); retrying in %.1fs", exc, backoff)
            await self._sleep_or_shutdown(backoff)
            backoff = min(backoff * 2, self.config.register_backoff_max_s)
        return EXIT_OK

    async def _register(self, bootstrap_token: str) -> RegisterResponse | int:
        request = RegisterRequest(
            bootstrap_token=bootstrap_token,
            agent_version=__version__,
            hostname=socket.gethostname(),
            gpus=self._gpus,
            advertise_host=self.config.advertise_host,
            tls_fingerprint=self.tls.fingerprint if self.tls is not None else "",
        )
        backoff = self.config.register_backoff_initial_s
        while not self.shutdown.is_set():
            try:
                return await self.client.register(request)
            except ControlPlaneRejected as exc:
                # The control plane's message says why (a used or expired token, another
                # protocol version...) and what to do.
                log.error("registration refused: %s", exc)
                return EXIT_REJECTED
            except ControlPlaneUnavailable as exc:
                log.warning("registration failed (%s); retrying in %.1fs", exc, backoff)
            await self._sleep_or_shutdown(backoff)
            backoff = min(backoff * 2, self.config.register_backoff_max_s)
        return EXIT_OK

    async def _apply(self, desired: Desired) -> None:
        assert self.supervisor is not None
        if desired.action != self._action:
            log.info("desired action: %s", desired.action.value)
        if desired.action == DesiredAction.SERVE:
            if desired.engine is None:
                log.error("desired=serve without an engine spec; keeping the current state")
                return
            self._action = desired.action
            await self.supervisor.serve(desired.engine)
        else:
            self._action = desired.action
        if desired.engine is not None:  # a machine that cannot be dialed: tunnels (agent.tunnel)
            await self.tunnels.update(
                desired.tunnel,
                credential=self._credential,
                instance_id=self._instance_id,
                engine_port=desired.engine.port,
            )
        self._on_engine_change()

    async def _heartbeat_loop(self) -> int:
        assert self.supervisor is not None
        offline_since: float | None = None
        while not self.shutdown.is_set() and not self._stop_desired():
            self._wake.clear()
            state = self.state()
            self._last_sent_state = state
            try:
                answer = await self.client.heartbeat(self._credential, self._heartbeat(state))
            except ControlPlaneRejected as exc:
                if exc.status in (401, 403):
                    log.error("control plane no longer accepts this agent (%s); stopping", exc)
                    self._stopping = True
                    self._forget_credential()
                    await self.supervisor.stop()
                    return EXIT_OK
                log.error("heartbeat refused (%s); retrying", exc)
            except ControlPlaneUnavailable as exc:
                log.warning("heartbeat failed (%s); still serving, retrying", exc)
                now = time.monotonic()
                offline_since = now if offline_since is None else offline_since
                limit = self.config.offline_exit_s
                if limit is not None and now - offline_since >= limit:
                    log.warning(
                        "no control plane for %.0fs; stopping the engine and exiting", limit
                    )
                    break
            else:
                offline_since = None
                self._interval = max(_MIN_INTERVAL_S, answer.heartbeat_interval_s)
                await self._apply(answer.desired)
                if self._stop_desired():
                    break
            await self._wait_next()
        return await self._shut_down()

    async def _wait_next(self) -> None:
        wake = asyncio.ensure_future(self._wake.wait())
        stop = asyncio.ensure_future(self.shutdown.wait())
        try:
            await asyncio.wait(
                {wake, stop}, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            wake.cancel()
            stop.cancel()

    async def _final_heartbeat(self) -> None:
        try:
            await self.client.heartbeat(
                self._credential,
                self._heartbeat(AgentState.STOPPING),
                request_timeout_s=self.config.final_heartbeat_timeout_s,
            )
        except ControlPlaneError as exc:
            log.warning("final heartbeat failed: %s", exc)

    async def _shut_down(self) -> int:
        assert self.supervisor is not None
        self._stopping = True
        if self._stop_desired():  # not on a signal: a rebooting machine must resume
            self._forget_credential()
        log.info("stopping the engine and exiting")
        await asyncio.gather(self.supervisor.stop(), self._final_heartbeat())
        return EXIT_OK


async def run_agent(config: AgentConfig) -> int:
    """Run the agent until it should exit; return the process exit code."""
    client = ControlPlaneClient(config.control_plane_url)
    agent = Agent(config, client)
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s", sig.name)
        agent.shutdown.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await agent.run()
    finally:
        if agent.supervisor is not None:
            agent.supervisor.kill_now()  # no-op after a clean stop; last resort otherwise
        await agent.tunnels.close()
        if agent.tls is not None:
            agent.tls.discard()  # a temporary key does not outlive the agent
        await client.aclose()
