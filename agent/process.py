"""Child-process plumbing: own process group, parent-death signal, group termination.

Guarantees: every engine runs as the leader of its own process group (so one signal reaches its
workers too), and on Linux it receives SIGTERM if the agent dies, even by SIGKILL
(``PR_SET_PDEATHSIG``). :func:`terminate_group` always ends with SIGKILL to the group, after
the grace period, or at once if it is cancelled during it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Callable

from agent.engines import EngineCommand

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded in the parent: dlopen after fork in a threaded process is not safe.
_LIBC = _load_libc()


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None] | None:
    libc = _LIBC
    if libc is None:
        return None
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        # The agent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


async def spawn(command: EngineCommand) -> asyncio.subprocess.Process:
    """Start ``command`` in a new session (own process group), stdout merged into our stderr.

    Raises ``OSError`` (e.g. ``FileNotFoundError`` for a missing executable).
    """
    return await asyncio.create_subprocess_exec(
        *command.argv,
        env=command.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),
        stderr=None,
        start_new_session=True,
        preexec_fn=_pdeathsig_preexec(os.getpid()),
    )


def kill_group(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group led by ``pid``; a vanished group is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def terminate_group(proc: asyncio.subprocess.Process, timeout_s: float = 10.0) -> int | None:
    """SIGTERM the group, wait up to ``timeout_s``, then SIGKILL the group; return the exit code.

    Safe to call on a process that already exited (stragglers in its group are still killed).
    Cancelled during the grace period, it SIGKILLs the group before the cancellation propagates.
    """
    try:
        if proc.returncode is None:
            kill_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                log.warning(
                    "engine pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, timeout_s
                )
    finally:
        # Even when the stop itself is cancelled in its grace period (the agent is being torn
        # down): an engine that ignores SIGTERM must not outlive its agent.
        kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 5.0)
    return proc.returncode


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"engine was killed by {name}"
    return f"engine exited with code {returncode}"
