"""The provider adapter interface: how the orchestrator gets machines from anywhere.

Adapters are synchronous (cloud SDKs block) and run only in worker tasks, with timeouts, never
on an event loop. Every machine is tagged with our instance id so that it can be found again
after a lost response or a crash (``find_machine``) and swept when orphaned (``list_machines``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import ClassVar

from apps.instances.models import Provider

# The tag (label) carrying our instance id on every cloud resource we create.
INSTANCE_TAG = "inventiv-instance"
# The tag marking a resource as ours at all (value: the platform's deployment name).
MANAGED_TAG = "inventiv-managed"


class ProviderError(Exception):
    """A provider call failed. ``transient`` errors are retried; others fail the attempt."""

    transient = False
    code = "provider_error"

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class TransientProviderError(ProviderError):
    transient = True
    code = "transient"


class QuotaExceeded(ProviderError):
    code = "quota_exceeded"


class OutOfCapacity(ProviderError):
    """No stock of this instance type in this zone right now."""

    code = "out_of_capacity"


class AuthenticationFailed(ProviderError):
    code = "authentication_failed"


class MachineNotFound(ProviderError):
    code = "not_found"


class NotSupported(ProviderError):
    """The adapter does not offer this operation (e.g. power actions on local processes)."""

    code = "not_supported"


class PowerAction(StrEnum):
    POWERON = "poweron"
    POWEROFF = "poweroff"
    REBOOT = "reboot"


@dataclass(frozen=True)
class InstanceTypeInfo:
    """One entry of a provider's catalog."""

    code: str
    gpu_model: str
    gpu_count: int
    vram_per_gpu_gb: int
    vcpus: int
    ram_gb: int
    hourly_price: Decimal
    currency: str
    # zone -> "available" | "scarce" | "shortage"
    availability: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MachineSpec:
    """What to create. ``instance_id`` is ours and goes in the tags."""

    instance_id: str
    instance_type: str
    zone: str
    # Everything the machine needs to start the agent and register.
    control_plane_url: str
    bootstrap_token: str
    engine_port: int
    boot_volume_gb: int = 100
    user_data: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Machine:
    """A machine as the provider sees it."""

    resource_id: str  # the cloud's own id of the machine (Instance.provider_resource_id)
    instance_id: str | None  # from our tag; None when untagged
    state: str  # "pending" | "running" | "stopped" | "terminated" | provider-specific
    zone: str = ""
    public_ip: str | None = None
    private_ip: str | None = None
    created_at: datetime | None = None
    # Attached resources that terminate must also release (volume ids, ip ids...).
    attached: dict[str, list[str]] = field(default_factory=dict)
    # The engine port on this machine when the provider chooses it (on-premise hosts running
    # several instances); None: the instance's own ``engine_port``.
    engine_port: int | None = None


class ProviderAdapter(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    @abc.abstractmethod
    def list_instance_types(self) -> list[InstanceTypeInfo]:
        """The catalog, with prices and per-zone availability."""

    @abc.abstractmethod
    def create_machine(self, spec: MachineSpec) -> Machine:
        """Create and power on. Idempotent: if a machine tagged ``spec.instance_id`` exists,
        return it instead of creating another. Raises QuotaExceeded / OutOfCapacity /
        TransientProviderError / AuthenticationFailed / ProviderError."""

    @abc.abstractmethod
    def find_machine(self, instance_id: str) -> Machine | None:
        """The live machine tagged with our instance id, if any."""

    def get_machine(self, resource_id: str) -> Machine:
        """The machine with this cloud id (``Machine.resource_id``), whatever its tags.
        Raises MachineNotFound when it no longer exists (deleted, terminated). Default: not
        supported (adapters opt in)."""
        raise NotSupported(f"getting a machine by id is not supported by {self.kind}")

    def power(self, machine: Machine, action: PowerAction) -> Machine:
        """Power on, power off or reboot the machine and wait for the resulting state
        (``running``, ``stopped``, ``running``). Returns the machine as it is then. Raises
        MachineNotFound when it is gone, TransientProviderError when the state is not reached
        in time. Default: not supported (adapters opt in)."""
        raise NotSupported(f"power action {action} is not supported by {self.kind}")

    @property
    def supports_power(self) -> bool:
        """Whether ``power`` is implemented (checked before sending a power task)."""
        return type(self).power is not ProviderAdapter.power

    @abc.abstractmethod
    def list_machines(self) -> list[Machine]:
        """Every live machine carrying our tags (for the sweeper)."""

    @abc.abstractmethod
    def terminate_machine(self, machine: Machine) -> None:
        """Delete the machine and everything attached (volumes, IPs). Idempotent: a machine
        already gone is success."""

    def sweep_orphan_resources(
        self, *, owner_is_gone: Callable[[str], bool], older_than: timedelta
    ) -> list[tuple[str, str, str]]:
        """Delete resources we tagged that outlived their machine (a volume or IP left by a
        crash mid-terminate). ``owner_is_gone(instance_id)`` says whether the instance named by
        the tag may still need it. Returns (kind, id, instance id) of what was removed.
        Default: nothing to do (adapters whose machines hold nothing else)."""
        return []

    def engine_host(self, machine: Machine) -> str:
        """The address the gateway uses to reach the engine on this machine."""
        return machine.public_ip or machine.private_ip or ""
