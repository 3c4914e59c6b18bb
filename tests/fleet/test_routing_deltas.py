"""Incremental routing (issue 19): instance events applied to the gateway's table as deltas,
a full reload built off the event loop, engine secrets decrypted once per instance."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from apps.gateway import selectors
from apps.gateway.directory import Directory
from apps.gateway.routing import PREFIX_AWARE, RoutingTable
from apps.gateway.types import InstanceSnapshot, ModelSnapshot
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance
from apps.models.choices import ModelStatus
from apps.models.models import LlmModel
from tests.fleet.conftest import in_thread
from tests.instances.factories import make_instance


def _table() -> RoutingTable:
    return RoutingTable(breaker_failures=2, breaker_cooldown_s=60, load_factor=1.25)


def _snap(k: int) -> InstanceSnapshot:
    return InstanceSnapshot(id=f"i{k}", endpoint=f"http://h{k}:1", secret="s")


def test_a_delta_changes_one_route_and_keeps_the_other_instances_state() -> None:
    # Given a prefix-aware model code with two instances, one with a request in flight
    table = _table()
    model = ModelSnapshot(7, 1, "org", "bot", PREFIX_AWARE, 0, (_snap(0), _snap(1)))
    table.replace([model])
    busy = table.get(1, "bot").instances[0]  # type: ignore[union-attr]
    busy.outstanding = 3
    # When a third instance becomes ready, then the route has it, its ring too, and the busy
    # instance is the same state object, its count intact
    assert table.add_instance(7, _snap(2))
    route = table.get(1, "bot")
    assert route is not None
    assert [s.id for s in route.instances] == ["i0", "i1", "i2"]
    assert {index for _, index in route.ring} == {0, 1, 2}
    assert route.instances[0] is busy and busy.outstanding == 3
    # When the busy one leaves, then it is out of the route; an unknown model code is refused
    assert table.remove_instance(7, "i0")
    assert [s.id for s in table.get(1, "bot").instances] == ["i1", "i2"]  # type: ignore[union-attr]
    assert not table.remove_instance(7, "i0")
    assert not table.add_instance(99, _snap(5))


@pytest.fixture
def executor() -> Any:
    pool = ThreadPoolExecutor(2, thread_name_prefix="gateway-db")
    yield pool
    pool.shutdown(wait=True)


def _ready_model(mock_model: LlmModel, n: int) -> list[Instance]:
    LlmModel.objects.filter(id=mock_model.id).update(status=ModelStatus.ACTIVE)
    return [make_instance(mock_model, S.READY)[0] for _ in range(n)]


def _event(instance: Instance, status: str) -> dict[str, Any]:
    return {
        "instance_id": str(instance.id),
        "model_code_id": instance.llm_model_id,
        "status": status,
    }


@pytest.mark.django_db(transaction=True)
async def test_instance_events_are_applied_as_deltas(
    mock_model: LlmModel, executor: Any, monkeypatch: Any
) -> None:
    # Given a gateway's table loaded with a model code's two ready instances
    a, b = await in_thread(_ready_model, mock_model, 2)
    directory = Directory(_table(), executor)
    await directory.reload()

    def route_ids() -> set[str]:
        route = directory.table.get(mock_model.organization_id, mock_model.name)
        return {s.id for s in route.instances} if route else set()

    assert route_ids() == {str(a.id), str(b.id)}
    full_reloads: list[int] = []
    monkeypatch.setattr(selectors, "routing_snapshot", lambda **kw: full_reloads.append(1))
    # When one becomes unavailable: it leaves the route at once, without reading anything
    await in_thread(Instance.objects.filter(id=a.id).update, status=S.UNAVAILABLE)
    await directory.apply_instance_event(_event(a, S.UNAVAILABLE))
    assert route_ids() == {str(b.id)}
    # When it is ready again: it is read alone and comes back; no full reload meanwhile
    await in_thread(Instance.objects.filter(id=a.id).update, status=S.READY)
    await directory.apply_instance_event(_event(a, S.READY))
    assert route_ids() == {str(a.id), str(b.id)}
    assert full_reloads == []
    assert not directory._wake.is_set()


@pytest.mark.django_db(transaction=True)
async def test_a_ready_read_overtaken_by_a_later_event_is_dropped(
    mock_model: LlmModel, executor: Any, monkeypatch: Any
) -> None:
    # Given an instance whose "ready" read is slow (it started before it became unavailable)
    (a,) = await in_thread(_ready_model, mock_model, 1)
    directory = Directory(_table(), executor)
    await directory.reload()
    directory.table.remove_instance(a.llm_model_id, str(a.id))
    release = threading.Event()
    real = selectors.instance_route_snapshot

    def slow(**kwargs: Any) -> Any:
        snapshot = real(**kwargs)
        release.wait(5)
        return snapshot

    monkeypatch.setattr(selectors, "instance_route_snapshot", slow)
    ready = asyncio.create_task(directory.apply_instance_event(_event(a, S.READY)))
    await asyncio.sleep(0.2)
    # When the later "unavailable" event is applied before the read returns
    await directory.apply_instance_event(_event(a, S.UNAVAILABLE))
    release.set()
    await ready
    # Then the instance stays out of the route
    route = directory.table.get(mock_model.organization_id, mock_model.name)
    assert route is not None and route.instances == []


@pytest.mark.django_db(transaction=True)
async def test_a_full_reload_is_built_off_the_event_loop(
    mock_model: LlmModel, executor: Any, monkeypatch: Any
) -> None:
    # Given a slow snapshot (a large fleet) and an event during the reload
    instances = await in_thread(_ready_model, mock_model, 2)
    directory = Directory(_table(), executor)
    built_in: list[str] = []
    real_prepare = directory.table.prepare

    def prepare(models: Any) -> Any:
        built_in.append(threading.current_thread().name)
        time.sleep(0.3)
        return real_prepare(models)

    monkeypatch.setattr(directory.table, "prepare", prepare)
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t0 - 0.01)

    tick = asyncio.create_task(ticker())
    reload = asyncio.create_task(directory.reload())
    await asyncio.sleep(0.1)
    await in_thread(Instance.objects.filter(id=instances[0].id).update, status=S.DRAINING)
    await directory.apply_instance_event(_event(instances[0], S.DRAINING))
    await reload
    tick.cancel()
    # Then the routes were built in the executor's thread, the loop kept turning, and the event
    # that came during the reload holds after it (the snapshot may predate it)
    assert built_in and built_in[0].startswith("gateway-db")
    assert max(lags) < 0.1
    route = directory.table.get(mock_model.organization_id, mock_model.name)
    assert route is not None and [s.id for s in route.instances] == [str(instances[1].id)]


@pytest.mark.django_db
def test_engine_secrets_are_decrypted_once_per_instance(
    mock_model: LlmModel, monkeypatch: Any
) -> None:
    # Given three ready instances
    _ready_model(mock_model, 3)
    selectors._SECRETS.clear()
    calls: list[str] = []
    real = selectors.decrypt
    monkeypatch.setattr(selectors, "decrypt", lambda value: calls.append(value) or real(value))
    # When the routing snapshot is read three times, then each secret was decrypted once
    for _ in range(3):
        snapshot = selectors.routing_snapshot()
    assert len(calls) == 3
    assert {i.secret for m in snapshot for i in m.instances} == {"s"}
