"""Cheap heartbeats (issue 19): one narrow query in steady state, only what changed written,
the lease renewed, the answer from the memo; anything that matters takes the full path. And the
ASGI fast path answers as the Django view does."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import agent
from agent.protocol import AgentState, EngineMetrics, EngineStatus, Heartbeat
from apps.instances.agents.api.asgi import HeartbeatApp
from apps.instances.agents.services import heartbeat_leases_flush
from apps.instances.choices import InstanceStatus as S
from apps.instances.models import Instance
from apps.instances.selectors import heartbeat_lease_key
from apps.instances.services import instance_drain
from apps.models.models import LlmModel
from inventiv import crypto
from tests.fleet.conftest import in_thread
from tests.instances.factories import make_instance

PATH = "/internal/agent/v1/heartbeat"
ENGINE = EngineStatus(healthy=True, model_listed=True, warmed_up=True, pid=7)


def _serving(model: LlmModel) -> tuple[Instance, str]:
    credential = crypto.new_token("ivc_")
    instance, _ = make_instance(
        model,
        S.READY,
        credential_hash=crypto.token_hash(credential),
        registered_at=timezone.now(),
        last_heartbeat_at=timezone.now(),
        agent_version=agent.__version__,
    )
    return instance, credential


def _body(instance: Instance, state: AgentState = AgentState.READY, **kw: Any) -> bytes:
    return (
        Heartbeat(
            instance_id=str(instance.id),
            agent_version=agent.__version__,
            state=state,
            engine=kw.pop("engine", ENGINE),
            **kw,
        )
        .model_dump_json()
        .encode()
    )


def _beat(client: Client, credential: str, body: bytes) -> Any:
    return client.post(
        PATH, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {credential}"
    )


@pytest.mark.django_db
def test_a_steady_beat_costs_one_query_and_renews_the_lease(
    client: Client, mock_model: LlmModel
) -> None:
    # Given a ready instance whose agent beat once (the full path)
    instance, credential = _serving(mock_model)
    first = _beat(client, credential, _body(instance))
    assert first.status_code == 200
    heartbeat_leases_flush()
    cache.delete(heartbeat_lease_key(instance.id))
    # When it beats again with nothing changed
    with CaptureQueriesContext(connection) as captured:
        again = _beat(client, credential, _body(instance))
    # Then one query (the narrow, indexed look-up by credential), the same answer, the lease
    assert again.status_code == 200
    assert again.json() == first.json()
    assert len(captured.captured_queries) == 1, [q["sql"] for q in captured]
    assert "credential_hash" in captured.captured_queries[0]["sql"]
    heartbeat_leases_flush()  # (a thread of the process does it every LEASE_FLUSH_S)
    assert cache.get(heartbeat_lease_key(instance.id)) is not None


@pytest.mark.django_db
def test_it_writes_only_what_changed(client: Client, mock_model: LlmModel) -> None:
    instance, credential = _serving(mock_model)
    _beat(client, credential, _body(instance))
    # Given a recorded beat older than the persistence period
    old = timezone.now() - timedelta(seconds=60)
    Instance.objects.filter(id=instance.id).update(last_heartbeat_at=old)
    # When the agent beats with new metrics
    metrics = EngineMetrics(requests_running=3, kv_cache_usage=0.5)
    with CaptureQueriesContext(connection) as captured:
        _beat(client, credential, _body(instance, metrics=metrics))
    # Then one UPDATE writes the two, and nothing else
    updates = [q["sql"] for q in captured if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1 and "engine_metrics" in updates[0]
    assert "agent_state" not in updates[0] and "engine_status" not in updates[0]
    instance.refresh_from_db()
    assert instance.engine_metrics["requests_running"] == 3
    assert instance.last_heartbeat_at > old


@pytest.mark.django_db
def test_a_change_the_full_path_acts_upon_is_never_answered_from_the_memo(
    client: Client, mock_model: LlmModel
) -> None:
    instance, credential = _serving(mock_model)
    assert _beat(client, credential, _body(instance)).json()["desired"]["action"] == "serve"
    # When the engine goes down: the instance is no longer routable
    down = EngineStatus(healthy=False, restarts=1, last_error="exit 1")
    _beat(client, credential, _body(instance, AgentState.ENGINE_DOWN, engine=down))
    assert Instance.objects.get(id=instance.id).status == S.STARTING
    # When it is ready again: ready again
    _beat(client, credential, _body(instance))
    assert Instance.objects.get(id=instance.id).status == S.READY
    _beat(client, credential, _body(instance))  # memoised now
    # When the control plane drains it: the next answer says drain, though the agent reports
    # exactly what it reported before (the memo must not answer from the status it had)
    instance_drain(instance=Instance.objects.get(id=instance.id), reason="scaled down")
    answer = _beat(client, credential, _body(instance)).json()
    assert answer["desired"]["action"] == "drain"


@pytest.mark.django_db
def test_an_unknown_credential_is_refused_before_the_body_is_read(
    client: Client, mock_model: LlmModel
) -> None:
    response = _beat(client, "ivc_nobody", b"not json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_agent_credentials"


async def _asgi(app: HeartbeatApp, body: bytes, credential: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": PATH,
        "headers": [(b"authorization", f"Bearer {credential}".encode())],
    }
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("db_connections", [2, 0], ids=["on-the-event-loop", "in-threads"])
async def test_the_asgi_fast_path_answers_as_the_view(
    mock_model: LlmModel, db_connections: int
) -> None:
    instance, credential = await in_thread(_serving, mock_model)
    passed: list[str] = []

    async def default(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    app = HeartbeatApp(default, db_connections=db_connections)
    try:
        # A beat: 200 and the desired state; twice (the second from the memo), the same answer
        status, body = await _asgi(app, _body(instance), credential)
        assert status == 200 and json.loads(body)["desired"]["action"] == "serve"
        assert await _asgi(app, _body(instance), credential) == (status, body)
        # ... which is the view's, byte for byte
        view = await in_thread(lambda: _beat(Client(), credential, _body(instance)))
        assert (view.status_code, view.content) == (status, body)
        # Refusals in the envelope, as the view's: a bad credential, a body over the limit,
        # a body that is not JSON, another protocol, a bad field, another instance's beat
        status, body = await _asgi(app, _body(instance), "ivc_wrong")
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_agent_credentials"
        status, body = await _asgi(app, b"x" * (300 * 1024), credential)
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
        other, _ = await in_thread(_serving, mock_model)
        for bad in (
            b"not json",
            b"[]",
            json.dumps({"protocol_version": 99}).encode(),
            json.dumps({"instance_id": str(instance.id), "state": "dancing"}).encode(),
            _body(other),
        ):
            got = await _asgi(app, bad, credential)
            view = await in_thread(lambda b=bad: _beat(Client(), credential, b))
            assert got == (view.status_code, view.content) and got[0] in (400, 401), got
        # Anything else goes on to Django
        await app({"type": "http", "method": "GET", "path": PATH}, None, None)
        await app(
            {"type": "http", "method": "POST", "path": "/internal/agent/v1/register"}, None, None
        )
        assert passed == [PATH, "/internal/agent/v1/register"]
    finally:
        await app.close()


@pytest.mark.django_db(transaction=True)
async def test_a_steady_beat_is_answered_on_the_event_loop_and_writes_what_is_due(
    mock_model: LlmModel,
) -> None:
    # Given an instance whose agent beat once (the full path, in a thread)
    instance, credential = await in_thread(_serving, mock_model)
    app = HeartbeatApp(None, db_connections=2)
    try:
        first = await _asgi(app, _body(instance), credential)
        assert first[0] == 200
        # When no thread may run, and its recorded beat is older than the persistence period
        old = timezone.now() - timedelta(seconds=60)
        await in_thread(
            lambda: Instance.objects.filter(id=instance.id).update(last_heartbeat_at=old)
        )

        def no_thread() -> Any:
            raise AssertionError("a steady beat took a thread")

        app.executor = no_thread  # type: ignore[method-assign]
        metrics = EngineMetrics(requests_running=2, kv_cache_usage=0.25)
        again = await _asgi(app, _body(instance, metrics=metrics), credential)
        # Then the same answer; the two written with the next batch, on the loop's connection
        assert again == first
        assert app.db is not None and await app.db.flush() == 1
        row = await in_thread(lambda: Instance.objects.get(id=instance.id))
        assert row.last_heartbeat_at > old and row.engine_metrics["requests_running"] == 2
        # When a beat takes the full path (the engine went down) before the next batch, the
        # older pending write is dropped: the full path's own stands
        app.executor = lambda: None  # type: ignore[method-assign,assignment,return-value]
        assert app.db is not None
        app.db.write(str(instance.id), {"engine_metrics": {"requests_running": 9}})
        down = EngineStatus(healthy=False, restarts=1, last_error="exit 1")
        status, _ = await _asgi(
            app, _body(instance, AgentState.ENGINE_DOWN, engine=down), credential
        )
        assert status == 200 and await app.db.flush() == 0
        row = await in_thread(lambda: Instance.objects.get(id=instance.id))
        assert row.status == S.STARTING and row.engine_metrics.get("requests_running") != 9
        heartbeat_leases_flush()
        assert cache.get(heartbeat_lease_key(instance.id)) is not None
    finally:
        await app.close()


@pytest.mark.django_db(transaction=True)
async def test_a_batch_of_beats_skips_a_locked_row_and_keeps_a_failed_batch(
    mock_model: LlmModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apps.instances.agents.api.asgi import BeatDatabase

    # Given two instances whose recorded beats are old, and pending writes for both
    (a, _), (b, _) = [await in_thread(_serving, mock_model) for _ in range(2)]
    old = timezone.now() - timedelta(seconds=60)
    await in_thread(
        lambda: Instance.objects.filter(id__in=[a.id, b.id]).update(last_heartbeat_at=old)
    )
    db = BeatDatabase(2)
    try:
        now = timezone.now()
        db.write(str(a.id), {"last_heartbeat_at": now})
        db.write(str(b.id), {"last_heartbeat_at": now, "engine_metrics": {"requests_running": 4}})
        # When another transaction holds b's row (a transition under way)
        holding, release = asyncio.Event(), asyncio.Event()

        def hold() -> None:
            from django.db import transaction

            with transaction.atomic():
                Instance.objects.select_for_update().get(id=b.id)
                asyncio.run_coroutine_threadsafe(_set(holding), loop)
                asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)

        loop = asyncio.get_running_loop()
        holder = asyncio.ensure_future(in_thread(hold))
        await asyncio.wait_for(holding.wait(), 10)
        # Then the batch writes a's row at once, without waiting for b's
        assert await asyncio.wait_for(db.flush(), 5) == 1
        release.set()
        await holder
        rows = await in_thread(
            lambda: {i.id: i for i in Instance.objects.filter(id__in=[a.id, b.id])}
        )
        assert rows[a.id].last_heartbeat_at == now and rows[b.id].last_heartbeat_at == old
        assert rows[b.id].engine_metrics.get("requests_running") is None
        # When a batch fails (the database away), it is kept, under anything newer
        db.write(str(a.id), {"engine_metrics": {"requests_running": 1}})

        async def broken() -> Any:
            raise OSError("connection refused")

        monkeypatch.setattr(db, "_get_pool", broken)
        with pytest.raises(OSError):
            await db.flush()
        db.write(str(a.id), {"engine_metrics": {"requests_running": 2}})
        monkeypatch.undo()
        assert await db.flush() == 1
        row = await in_thread(lambda: Instance.objects.get(id=a.id))
        assert row.engine_metrics["requests_running"] == 2
    finally:
        await db.close()


async def _set(event: asyncio.Event) -> None:
    event.set()


@pytest.mark.django_db(transaction=True)
async def test_a_memoised_answer_never_outlives_a_transition_or_a_credential(
    mock_model: LlmModel,
) -> None:
    # Given a memoised answer on the event loop's path
    instance, credential = await in_thread(_serving, mock_model)
    app = HeartbeatApp(None, db_connections=2)
    try:
        await _asgi(app, _body(instance), credential)
        status, body = await _asgi(app, _body(instance), credential)
        assert status == 200 and json.loads(body)["desired"]["action"] == "serve"
        # When the control plane drains it, the very next beat says drain
        await in_thread(
            lambda: instance_drain(instance=Instance.objects.get(id=instance.id), reason="down")
        )
        status, body = await _asgi(app, _body(instance), credential)
        assert status == 200 and json.loads(body)["desired"]["action"] == "drain"
        # When its credential is rotated, the old one is refused at once, the new one served
        rotated = crypto.new_token("ivc_")
        await in_thread(
            lambda: Instance.objects.filter(id=instance.id).update(
                credential_hash=crypto.token_hash(rotated)
            )
        )
        status, body = await _asgi(app, _body(instance), credential)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_agent_credentials"
        assert (await _asgi(app, _body(instance), rotated))[0] == 200
        # When it is revoked (the credential cleared), refused at once too
        await in_thread(lambda: Instance.objects.filter(id=instance.id).update(credential_hash=""))
        assert (await _asgi(app, _body(instance), rotated))[0] == 401
    finally:
        await app.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("db_connections", [2, 0], ids=["on-the-event-loop", "in-threads"])
async def test_an_unexpected_failure_is_a_500_in_the_envelope(
    mock_model: LlmModel, monkeypatch: pytest.MonkeyPatch, db_connections: int
) -> None:
    instance, credential = await in_thread(_serving, mock_model)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the database went away")

    # The look-up's row on the event loop; the whole answer in a thread
    target = "identify_row" if db_connections else "heartbeat_answer"
    monkeypatch.setattr(f"apps.instances.agents.api.asgi.{target}", broken)
    app = HeartbeatApp(None, db_connections=db_connections)
    try:
        status, body = await _asgi(app, _body(instance), credential)
        assert status == 500 and json.loads(body)["error"]["code"] == "server_error"
    finally:
        await app.close()


@pytest.mark.django_db
def test_a_new_hugging_face_token_reaches_the_agent_at_its_next_beat(
    client: Client, mock_model: LlmModel
) -> None:
    from apps.models.models import HubToken

    # Given a memoised answer without a token
    instance, credential = _serving(mock_model)
    _beat(client, credential, _body(instance))
    assert _beat(client, credential, _body(instance)).json()["desired"]["engine"]["hf_token"] == ""
    # When the organization sets one, then the next beat carries it
    HubToken.objects.create(
        organization_id=mock_model.organization_id, token_encrypted=crypto.encrypt("hf_new")
    )
    answer = _beat(client, credential, _body(instance)).json()
    assert answer["desired"]["engine"]["hf_token"] == "hf_new"
