"""The routing table: model code → ready instances, in memory, with per-instance outstanding
counts, a circuit breaker, and the three routing policies.

Everything here runs on the gateway's event loop thread: plain attributes, no locks. Outstanding
counts are per gateway process (each replica balances its own share of the traffic).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field

import aiohttp

from apps.gateway.tunnel import TUNNELS
from apps.gateway.types import InstanceSnapshot, ModelSnapshot

LEAST_OUTSTANDING = "least_outstanding"
SESSION_AFFINITY = "session_affinity"
PREFIX_AWARE = "prefix_aware"
_VNODES = 64  # virtual nodes per instance on the consistent-hash ring


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(slots=True)
class InstanceState:
    snapshot: InstanceSnapshot
    outstanding: int = 0
    failures: int = 0  # consecutive
    open_until: float = 0.0  # circuit open (out of rotation) until this monotonic time
    url_base: str = ""
    auth_header: str = ""
    # aiohttp's ``ssl``: an https endpoint (the agent's TLS front) is pinned to the certificate
    # its agent reported, and to nothing else; ignored for http.
    ssl: aiohttp.Fingerprint | bool = True

    def __post_init__(self) -> None:
        snapshot = self.snapshot
        # Not through a tunnel: its local end speaks plain HTTP.
        if (
            snapshot.tls_fingerprint
            and snapshot.endpoint.startswith("https://")
            and not (snapshot.tunnel)
        ):
            self.ssl = aiohttp.Fingerprint(bytes.fromhex(snapshot.tls_fingerprint))
        self.url_base = self.snapshot.endpoint
        self.auth_header = "Bearer " + self.snapshot.secret
        if self.snapshot.tunnel:  # this process's local end of the agent's tunnel
            self.url_base = TUNNELS.url_for(self.snapshot.id)

    @property
    def reachable(self) -> bool:
        """False for a tunneled instance with no tunnel into this process."""
        return not self.snapshot.tunnel or TUNNELS.connected(self.snapshot.id)

    @property
    def id(self) -> str:
        return self.snapshot.id


@dataclass(slots=True)
class ModelRoute:
    snapshot: ModelSnapshot
    instances: list[InstanceState]
    label: str
    ring: list[tuple[int, int]] = field(default_factory=list)  # (hash, index in instances)
    ring_keys: list[int] = field(default_factory=list)

    def build_ring(self) -> None:
        ring = [
            (_hash64(f"{inst.id}#{v}".encode()), index)
            for index, inst in enumerate(self.instances)
            for v in range(_VNODES)
        ]
        ring.sort()
        self.ring = ring
        self.ring_keys = [h for h, _ in ring]


@dataclass(slots=True)
class PreparedTable:
    """A full snapshot's routes, built off the event loop, and the states made for it."""

    routes: dict[tuple[int, str], ModelRoute]
    fresh: list[InstanceState]
    by_org: dict[int, list[ModelRoute]]
    by_id: dict[int, tuple[int, str]]
    stale: list[str]  # known instances no longer routed (when it was prepared)


class RoutingTable:
    def __init__(self, *, breaker_failures: int, breaker_cooldown_s: float, load_factor: float):
        self.routes: dict[tuple[int, str], ModelRoute] = {}
        self.by_org: dict[int, list[ModelRoute]] = {}
        self._states: dict[str, InstanceState] = {}
        # Model code id → its key in ``routes`` (instance events name the model code by id).
        self.by_id: dict[int, tuple[int, str]] = {}
        self._rr = itertools.count()
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.load_factor = load_factor

    # --- loading ---------------------------------------------------------------------------
    # A full snapshot is built by ``prepare`` (pure: it only reads the table, so it may run in
    # a thread, off the event loop) and installed by ``install`` (on the loop: dictionary swaps
    # and the outstanding counts carried over). Instance events are applied as deltas to one
    # model code's route (``add_instance``, ``remove_instance``).
    def _build(self, model: ModelSnapshot) -> tuple[ModelRoute, list[InstanceState]]:
        """The route of ``model``, reusing the states of known, unchanged instances; and the
        states it made anew (adopted by ``_adopt`` on the loop)."""
        states, fresh = [], []
        for inst in model.instances:
            state = self._states.get(inst.id)
            if state is None or state.snapshot != inst:
                state = InstanceState(inst)
                fresh.append(state)
            states.append(state)
        route = ModelRoute(model, states, f"{model.organization_slug}/{model.name}")
        if model.routing_policy == PREFIX_AWARE:
            route.build_ring()
        return route, fresh

    def _adopt(self, fresh: list[InstanceState]) -> None:
        for state in fresh:
            # Keep counters of a known instance across reloads (its requests are in flight).
            previous = self._states.get(state.id)
            if previous is not None and previous is not state:
                state.outstanding = previous.outstanding
            self._states[state.id] = state

    def _route(self, model: ModelSnapshot) -> ModelRoute:
        route, fresh = self._build(model)
        self._adopt(fresh)
        return route

    def prepare(self, models: list[ModelSnapshot]) -> PreparedTable:
        """Everything a full snapshot needs, built without changing the table."""
        routes: dict[tuple[int, str], ModelRoute] = {}
        fresh: list[InstanceState] = []
        by_org: dict[int, list[ModelRoute]] = {}
        for m in models:
            route, made = self._build(m)
            routes[(m.organization_id, m.name)] = route
            by_org.setdefault(m.organization_id, []).append(route)
            fresh.extend(made)
        by_id = {route.snapshot.id: key for key, route in routes.items()}
        live = {inst.id for route in routes.values() for inst in route.instances}
        stale = [i for i in list(self._states) if i not in live]
        return PreparedTable(routes, fresh, by_org, by_id, stale)

    def install(self, prepared: PreparedTable) -> None:
        """Install a prepared full snapshot (the periodic refresh, the safety net): on the
        event loop, only the new states adopted, the forgotten ones dropped and three swaps."""
        self._adopt(prepared.fresh)
        for instance_id in prepared.stale:
            TUNNELS.release(instance_id)  # its local listener, if tunneled
            state = self._states.get(instance_id)
            if state is not None and state.outstanding == 0:
                del self._states[instance_id]
        self.routes, self.by_org, self.by_id = prepared.routes, prepared.by_org, prepared.by_id

    def replace(self, models: list[ModelSnapshot]) -> None:
        """Install a full snapshot at once (``prepare`` then ``install``)."""
        self.install(self.prepare(models))

    def upsert(self, model: ModelSnapshot) -> ModelRoute:
        """Install one model code (looked up on a miss, or changed by an instance event)."""
        route = self._route(model)
        self.routes[(model.organization_id, model.name)] = route
        self.by_id[model.id] = (model.organization_id, model.name)
        org_routes = [
            r for r in self.by_org.get(model.organization_id, []) if r.snapshot.id != model.id
        ]
        self.by_org[model.organization_id] = [*org_routes, route]
        return route

    def route_by_id(self, model_code_id: int) -> ModelRoute | None:
        key = self.by_id.get(model_code_id)
        return self.routes.get(key) if key is not None else None

    def add_instance(self, model_code_id: int, instance: InstanceSnapshot) -> bool:
        """Put one ready instance in its model code's route (replacing an older snapshot of
        it). False when the model code is not in the table (a full reload knows more)."""
        route = self.route_by_id(model_code_id)
        if route is None:
            return False
        others = [i for i in route.snapshot.instances if i.id != instance.id]
        instances = tuple(sorted([*others, instance], key=lambda i: i.id))
        self.upsert(dataclasses.replace(route.snapshot, instances=instances))
        return True

    def remove_instance(self, model_code_id: int, instance_id: str) -> bool:
        """Take one instance out of its model code's route (no longer ready); its requests in
        flight keep their state until they end. False when it was not routed."""
        route = self.route_by_id(model_code_id)
        if route is None or all(i.id != instance_id for i in route.snapshot.instances):
            return False
        instances = tuple(i for i in route.snapshot.instances if i.id != instance_id)
        self.upsert(dataclasses.replace(route.snapshot, instances=instances))
        TUNNELS.release(instance_id)  # its local listener, if tunneled
        state = self._states.get(instance_id)
        if state is not None and state.outstanding == 0:
            del self._states[instance_id]
        return True

    def get(self, organization_id: int, name: str) -> ModelRoute | None:
        return self.routes.get((organization_id, name))

    # --- circuit breaker -------------------------------------------------------------------
    def record_success(self, state: InstanceState) -> None:
        state.failures = 0
        state.open_until = 0.0

    def record_failure(self, state: InstanceState) -> None:
        state.failures += 1
        if state.failures >= self.breaker_failures:
            # Half-open after the cooldown: one more failure opens it again.
            state.failures = self.breaker_failures - 1
            state.open_until = time.monotonic() + self.breaker_cooldown_s

    # --- choosing --------------------------------------------------------------------------
    def choose(
        self,
        route: ModelRoute,
        *,
        exclude: set[str],
        session: str | None = None,
        prefix: str | None = None,
    ) -> InstanceState | None:
        now = time.monotonic()
        usable = [s for s in route.instances if s.id not in exclude and s.reachable]
        candidates = [s for s in usable if s.open_until <= now]
        if not candidates:
            # Every instance is out of rotation: trying one beats refusing the request.
            candidates = usable
            if not candidates:
                return None
        if len(candidates) == 1:
            return candidates[0]
        policy = route.snapshot.routing_policy
        if policy == SESSION_AFFINITY and session:
            return self._rendezvous(candidates, session)
        if policy == PREFIX_AWARE and prefix:
            chosen = self._bounded_ring(route, candidates, prefix)
            if chosen is not None:
                return chosen
        return self._least_outstanding(candidates)

    def _least_outstanding(self, candidates: list[InstanceState]) -> InstanceState:
        # Round-robin start so that ties (the common case at low load) spread evenly.
        n = len(candidates)
        start = next(self._rr) % n
        best = candidates[start]
        for i in range(1, n):
            state = candidates[(start + i) % n]
            if state.outstanding < best.outstanding:
                best = state
        return best

    @staticmethod
    def _rendezvous(candidates: list[InstanceState], session: str) -> InstanceState:
        """Highest-random-weight hashing: a session keeps its instance while it is healthy, and
        only the sessions of a removed instance move."""
        key = session.encode()
        return max(candidates, key=lambda s: _hash64(key + b"|" + s.id.encode()))

    def _bounded_ring(
        self, route: ModelRoute, candidates: list[InstanceState], prefix: str
    ) -> InstanceState | None:
        """Consistent hashing with bounded loads: walk the ring from the prefix's hash and take
        the first instance whose load stays within ``load_factor`` × the mean."""
        if not route.ring:
            return None
        allowed = {id(s) for s in candidates}
        total = sum(s.outstanding for s in candidates) + 1
        bound = math.ceil(self.load_factor * total / len(candidates))
        start = bisect.bisect(route.ring_keys, _hash64(prefix.encode()))
        seen: set[int] = set()
        ring, size = route.ring, len(route.ring)
        for step in range(size):
            index = ring[(start + step) % size][1]
            if index in seen:
                continue
            seen.add(index)
            state = route.instances[index]
            if id(state) in allowed and state.outstanding + 1 <= bound:
                return state
            if len(seen) == len(route.instances):
                break
        return None


class RetryBudget:
    """Retries may add at most ``ratio`` × requests (plus a small reserve), so that a failing
    fleet is not hit by a retry storm."""

    def __init__(self, ratio: float, reserve: float = 10.0) -> None:
        self.ratio = ratio
        self.cap = max(reserve, 100.0)
        self.tokens = reserve

    def deposit(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
