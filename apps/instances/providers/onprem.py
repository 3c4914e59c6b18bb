"""On-premise hosts: machines an operator joined (``python -m agent.host``).

"Creating a machine" records an assignment of GPUs on a free registered host; the host agent
pulls it and starts an instance agent with the instance's bootstrap token. "Terminating" marks
the assignment to stop; the host stops the process and reports it, which frees the GPUs.
Placement happens under a row lock on the host, so two provisioning tasks never hand out the
same GPU or port.

Provider settings: ``hourly_price_per_gpu`` and ``currency`` (for offers and cost), ``ports``
(``[first, last]`` engine ports, default 8000-8099).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from apps.instances.models import Instance, OnPremAssignment, OnPremHost
from apps.instances.providers.base import (
    InstanceTypeInfo,
    Machine,
    MachineNotFound,
    MachineSpec,
    OutOfCapacity,
    ProviderAdapter,
)
from inventiv import crypto

A = OnPremAssignment


def placeable_hosts(provider: Any) -> QuerySet[OnPremHost]:
    """Enabled, joined hosts heard from recently."""
    fresh = timezone.now() - timedelta(seconds=settings.ONPREM_HOST_OFFLINE_AFTER_S)
    return OnPremHost.objects.filter(
        provider=provider, enabled=True, joined_at__isnull=False, last_seen_at__gte=fresh
    ).order_by("id")


def _live(host: OnPremHost) -> QuerySet[OnPremAssignment]:
    # A stop-requested assignment holds its GPUs until the host reports it stopped.
    return host.assignments.exclude(state=A.State.STOPPED)


def free_gpu_indices(host: OnPremHost) -> list[int]:
    used = {i for indices in _live(host).values_list("gpu_indices", flat=True) for i in indices}
    return [int(g["index"]) for g in host.gpus or [] if int(g["index"]) not in used]


def _gpu_count(instance_type: str) -> int:
    head, sep, _ = instance_type.partition("x")
    return int(head) if sep and head.isdigit() else 1


class OnPremAdapter(ProviderAdapter):
    kind: ClassVar[str] = "onprem"

    def list_instance_types(self) -> list[InstanceTypeInfo]:
        """Hosts are offered directly by matching (per host, by free GPUs), not as types."""
        return []

    def _machine(self, assignment: OnPremAssignment) -> Machine:
        host = assignment.host
        state = {"pending": "pending", "running": "running"}.get(assignment.state, "stopping")
        if assignment.desired == A.Desired.STOP and assignment.state != A.State.STOPPED:
            state = "stopping"
        return Machine(
            resource_id=f"onprem-{assignment.id}",
            instance_id=str(assignment.instance_id),
            state=state,
            zone=host.name,
            public_ip=None,
            private_ip=host.advertise_host or None,
            created_at=assignment.created_at,
            attached={"gpus": [str(i) for i in assignment.gpu_indices]},
            engine_port=assignment.engine_port,
        )

    def _assignments(self) -> QuerySet[OnPremAssignment]:
        return A.objects.filter(host__provider=self.provider).select_related("host")

    def create_machine(self, spec: MachineSpec) -> Machine:
        """Place the instance on a free host (``spec.zone`` names one, else any). Idempotent:
        an instance already placed gets its assignment back. OutOfCapacity when no host has
        the GPUs free."""
        existing = self.find_machine(spec.instance_id)
        if existing is not None:
            return existing
        needed = _gpu_count(spec.instance_type)
        with transaction.atomic():
            hosts = placeable_hosts(self.provider).select_for_update()
            if spec.zone:
                hosts = hosts.filter(name=spec.zone)
            for host in hosts:
                free = free_gpu_indices(host)
                if len(free) < needed:
                    continue
                assignment = A.objects.create(
                    host=host,
                    instance_id=spec.instance_id,
                    gpu_indices=free[:needed],
                    engine_port=self._free_port(host, spec.engine_port),
                    bootstrap_token_encrypted=crypto.encrypt(spec.bootstrap_token),
                )
                # The agent learns its engine port from the instance at registration.
                Instance.objects.filter(id=spec.instance_id).update(
                    engine_port=assignment.engine_port
                )
                return self._machine(assignment)
        where = f"host {spec.zone}" if spec.zone else "any registered host"
        raise OutOfCapacity(f"{needed} free GPU(s) not available on {where}")

    def _free_port(self, host: OnPremHost, wanted: int) -> int:
        first, last = (self.provider.config or {}).get("ports") or (8000, 8099)
        used = set(_live(host).values_list("engine_port", flat=True))
        if wanted and wanted not in used and first <= wanted <= last:
            return wanted
        for port in range(int(first), int(last) + 1):
            if port not in used:
                return port
        raise OutOfCapacity(f"no free engine port on host {host.name}")

    def find_machine(self, instance_id: str) -> Machine | None:
        assignment = (
            self._assignments()
            .filter(instance_id=instance_id)
            .exclude(state=A.State.STOPPED)
            .first()
        )
        return self._machine(assignment) if assignment else None

    def list_machines(self) -> list[Machine]:
        return [self._machine(a) for a in self._assignments().exclude(state=A.State.STOPPED)]

    def get_machine(self, resource_id: str) -> Machine:
        """The assignment ``onprem-<id>`` of this provider, unless stopped. No power actions:
        the host, not the control plane, owns the machine."""
        assignment_id = resource_id.removeprefix("onprem-")
        assignment = None
        if assignment_id.isdigit():
            live = self._assignments().exclude(state=A.State.STOPPED)
            assignment = live.filter(id=int(assignment_id)).first()
        if assignment is None:
            raise MachineNotFound(f"no live on-premise assignment {resource_id}")
        return self._machine(assignment)

    def terminate_machine(self, machine: Machine) -> None:
        """Mark the assignment to stop: the host stops the process and reports it stopped at
        its next poll (one it never started is marked stopped then). Idempotent."""
        assignment_id = int(machine.resource_id.removeprefix("onprem-"))
        A.objects.filter(id=assignment_id).exclude(state=A.State.STOPPED).update(
            desired=A.Desired.STOP, bootstrap_token_encrypted=""
        )

    def sweep_orphan_resources(
        self, *, owner_is_gone: Any, older_than: timedelta
    ) -> list[tuple[str, str, str]]:
        """Release stop-requested assignments of hosts silent for ``older_than``: an offline
        host cannot confirm, and its GPUs must not stay booked forever."""
        silent = timezone.now() - older_than
        stale = self._assignments().filter(desired=A.Desired.STOP).exclude(state=A.State.STOPPED)
        stale = stale.filter(host__last_seen_at__lt=silent)
        removed = [("assignment", f"onprem-{a.id}", str(a.instance_id)) for a in stale]
        stale.update(state=A.State.STOPPED, stopped_at=timezone.now())
        return removed

    def engine_host(self, machine: Machine) -> str:
        return machine.private_ip or ""
