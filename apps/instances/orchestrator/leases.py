"""Leases on commands in progress: a killed worker's command is taken up again within seconds.

A provision or terminate step runs under a lease (an ``OrchestratorLock`` row named
``command:<kind>:<instance id>``, one per kind: a terminate may overtake a provision in
flight, which then releases what it created) that a keeper thread extends every
``COMMAND_LEASE_S / 3`` while the step works. Guarantees:

* At most one worker runs a given command for an instance at a time: the lease is taken by
  compare-and-set; a second delivery of the command (re-sent, or redelivered by the broker)
  while it is held skips.
* A lease released normally has no expiry; a lease whose holder died (SIGKILL, a lost machine,
  a paused process) keeps its expiry, which passes within ``COMMAND_LEASE_S``: the reconciler
  (``commands_with_dead_holders``) re-sends those commands at once, not after
  ``COMMAND_RESEND_AFTER_S``.
* A holder that lost its lease (paused past it, then resumed) is told so (``lost``), so that the
  step can give back what it created meanwhile rather than duplicate a machine.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from apps.instances.models import OrchestratorLock
from inventiv import crypto

logger = logging.getLogger(__name__)
PREFIX = "command:"
PROVISION = "provision"
TERMINATE = "terminate"


class LeaseHeld(Exception):
    """Another live worker is running this command."""


class CommandLease:
    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{crypto.new_token(nbytes=4)}"
        self.lost = False
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def take(self) -> bool:
        now = timezone.now()
        OrchestratorLock.objects.get_or_create(name=self.name)
        return bool(
            OrchestratorLock.objects.filter(
                Q(expires_at__isnull=True) | Q(expires_at__lt=now), name=self.name
            ).update(holder=self.holder, expires_at=now + timedelta(seconds=self.seconds))
        )

    def extend(self) -> bool:
        until = timezone.now() + timedelta(seconds=self.seconds)
        kept = OrchestratorLock.objects.filter(name=self.name, holder=self.holder).update(
            expires_at=until
        )
        if not kept:
            self.lost = True
        return bool(kept)

    def release(self) -> None:
        OrchestratorLock.objects.filter(name=self.name, holder=self.holder).update(
            expires_at=None, last_run_at=timezone.now()
        )

    def _keep(self) -> None:
        try:
            while not self._stop.wait(self.seconds / 3):
                try:
                    if not self.extend():
                        logger.warning("lost the lease %s (paused past it?)", self.name)
                        return
                except Exception:  # the database blinked: try again at the next beat
                    logger.warning("could not extend the lease %s", self.name, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    def start_keeper(self) -> None:
        self._keeper = threading.Thread(target=self._keep, name=f"lease {self.name}", daemon=True)
        self._keeper.start()

    def stop_keeper(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(5)


@contextmanager
def command_lease(*, instance_id: str, kind: str) -> Iterator[CommandLease]:
    """Hold the ``kind`` command lease of an instance while the block runs; ``LeaseHeld`` if a
    live worker holds it. Released when the block ends, however it ends (but a killed
    process)."""
    lease = CommandLease(f"{PREFIX}{kind}:{instance_id}", settings.COMMAND_LEASE_S)
    if not lease.take():
        raise LeaseHeld(instance_id)
    lease.start_keeper()
    try:
        yield lease
    finally:
        lease.stop_keeper()
        lease.release()


def commands_with_dead_holders() -> set[str]:
    """Instance ids whose command lease expired while held: its worker died mid-command."""
    rows = OrchestratorLock.objects.filter(
        name__startswith=PREFIX, expires_at__lt=timezone.now()
    ).values_list("name", flat=True)
    return {name.rsplit(":", 1)[1] for name in rows}


def lease_forget(*, instance_id: str) -> None:
    """Mark a dead holder's lease as handled (the command is being re-sent); a worker that
    took the lease meanwhile keeps it."""
    OrchestratorLock.objects.filter(
        name__in=[f"{PREFIX}{kind}:{instance_id}" for kind in (PROVISION, TERMINATE)],
        expires_at__lt=timezone.now(),
    ).update(expires_at=None)


def leases_drop(*, instance_ids: list[str]) -> None:
    """Delete the lease rows of instances that reached a final state."""
    names = [f"{PREFIX}{kind}:{i}" for i in instance_ids for kind in (PROVISION, TERMINATE)]
    OrchestratorLock.objects.filter(name__in=names).delete()
