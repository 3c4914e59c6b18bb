"""Instance states, their groups and the one transition table."""

from __future__ import annotations

from django.db import models


class ProviderKind(models.TextChoices):
    LOCAL = "local", "Local processes"  # the agent as a subprocess of this machine
    SCALEWAY = "scaleway", "Scaleway"
    AWS = "aws", "AWS"
    ONPREM = "onprem", "On-premise"


class InstanceStatus(models.TextChoices):
    PROVISIONING = "provisioning", "Provisioning"  # intent recorded; machine being created
    BOOTING = "booting", "Booting"  # machine exists; waiting for the agent to register
    STARTING = "starting", "Starting"  # agent registered; engine starting / warming up
    READY = "ready", "Ready"  # engine healthy, model listed, warm-up answered: routable
    UNAVAILABLE = "unavailable", "Unavailable"  # missed heartbeats; replaced if it stays so
    DRAINING = "draining", "Draining"  # no new work; waiting for in-flight requests
    POWERING_OFF = "powering_off", "Powering off"  # drained; machine being stopped, disk kept
    POWERED_OFF = "powered_off", "Powered off"  # scaled to zero: stopped, disk kept; woken later
    TERMINATING = "terminating", "Terminating"  # releasing the machine and its resources
    TERMINATED = "terminated", "Terminated"  # nothing left at the provider
    PROVISIONING_FAILED = "provisioning_failed", "Provisioning failed"  # no machine obtained
    STARTUP_FAILED = "startup_failed", "Startup failed"  # no registration/readiness in time


S = InstanceStatus

# Routable: the gateway may send requests there.
ROUTABLE = frozenset({S.READY})
# Live: counts towards a model code's replicas.
LIVE = frozenset({S.PROVISIONING, S.BOOTING, S.STARTING, S.READY, S.UNAVAILABLE})
# Failed: recorded with a reason, then cleaned up through TERMINATING.
FAILED = frozenset({S.PROVISIONING_FAILED, S.STARTUP_FAILED})
TERMINAL = frozenset({S.TERMINATED})
# Holding (or possibly holding) a machine at the provider.
HOLDS_MACHINE = frozenset(set(S) - TERMINAL)
# Scaled to zero by power-off (docs/autoscaling.md): not a replica, but a machine kept.
POWERED_DOWN = frozenset({S.POWERING_OFF, S.POWERED_OFF})
# The provider kinds whose adapter can power machines off and on (``ProviderAdapter.power``);
# named here so that the web process need not import a cloud SDK to know (a test checks it).
POWER_KINDS = frozenset({ProviderKind.LOCAL, ProviderKind.SCALEWAY, ProviderKind.AWS})

TRANSITIONS: dict[InstanceStatus, frozenset[InstanceStatus]] = {
    S.PROVISIONING: frozenset({S.BOOTING, S.PROVISIONING_FAILED, S.TERMINATING}),
    S.BOOTING: frozenset({S.STARTING, S.STARTUP_FAILED, S.TERMINATING}),
    S.STARTING: frozenset({S.READY, S.UNAVAILABLE, S.STARTUP_FAILED, S.DRAINING, S.TERMINATING}),
    S.READY: frozenset({S.STARTING, S.UNAVAILABLE, S.DRAINING, S.TERMINATING}),
    S.UNAVAILABLE: frozenset({S.READY, S.STARTING, S.DRAINING, S.TERMINATING}),
    S.DRAINING: frozenset({S.POWERING_OFF, S.TERMINATING}),
    S.POWERING_OFF: frozenset({S.POWERED_OFF, S.TERMINATING}),
    # Woken: powered on, the machine boots and its agent resumes with its stored credential.
    S.POWERED_OFF: frozenset({S.BOOTING, S.TERMINATING}),
    S.TERMINATING: frozenset({S.TERMINATED}),
    S.TERMINATED: frozenset(),
    S.PROVISIONING_FAILED: frozenset({S.TERMINATING}),
    S.STARTUP_FAILED: frozenset({S.TERMINATING}),
}


def can_transition(current: InstanceStatus | str, to: InstanceStatus | str) -> bool:
    return InstanceStatus(to) in TRANSITIONS[InstanceStatus(current)]
