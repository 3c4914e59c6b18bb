"""Every refusal in OpenAI's envelope, with the status the SDK maps to the right exception."""

from __future__ import annotations

from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from apps.gateway.services import api_key_revoke
from tests.gateway.conftest import make_model_code

HELLO = [{"role": "user", "content": "hello"}]


def _chat(gateway, key: str, **extra):  # type: ignore[no-untyped-def]
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "sales-bot", "messages": HELLO, **extra},
        headers={"Authorization": f"Bearer {key}"} if key else {},
        timeout=10,
    )


def test_it_refuses_bad_revoked_and_expired_keys_with_one_body(
    model_code, start_engine, start_gateway, new_key
):
    # Given a live key, a revoked one, one about to expire and forged ones
    start_engine(model_code)
    gateway = start_gateway()
    _, live = new_key()
    revoked_row, revoked = new_key()
    expiring_row, expiring = new_key(expires_at=timezone.now() + timedelta(seconds=1))
    assert _chat(gateway, expiring).status_code == 200  # cached while valid
    api_key_revoke(key=revoked_row)
    wrong_secret = live[:-4] + ("aaaa" if not live.endswith("aaaa") else "bbbb")
    unknown = "sk-inv_0123456789abcdef_" + "x" * 43

    # When each is used (after the expiry)
    from tests.processes import wait_for

    wait_for(lambda: expiring_row.expires_at < timezone.now(), timeout=3)
    answers = [_chat(gateway, k) for k in (revoked, expiring, wrong_secret, unknown, "", "sk-1")]

    # Then all get the same 401, and the live key still works
    assert {a.status_code for a in answers} == {401}
    assert len({a.content for a in answers}) == 1
    assert answers[0].json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        gateway.client(revoked).models.list()
    assert _chat(gateway, live).status_code == 200


def test_it_refuses_a_model_the_key_may_not_use_and_an_unknown_model(
    owner_org, model_code, start_engine, start_gateway, new_key
):
    other = make_model_code(owner_org, "other-bot")
    start_engine(model_code)
    gateway = start_gateway()
    client = gateway.client(new_key(model_codes=[other])[1])

    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        client.chat.completions.create(model="sales-bot", messages=HELLO)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-bot", messages=HELLO)

    assert forbidden.value.code == "model_not_allowed"
    assert missing.value.code == "model_not_found"
    assert [m.id for m in client.models.list().data] == ["other-bot"]


def test_it_refuses_a_model_code_of_another_organization_as_unknown(
    stranger, model_code, start_engine, start_gateway
):
    from apps.accounts.models import Organization
    from apps.gateway.services import api_key_create

    start_engine(model_code)
    gateway = start_gateway()
    org = Organization.objects.get(memberships__user=stranger)
    _, key = api_key_create(organization=org, name="stranger")

    answer = _chat(gateway, key)

    assert answer.status_code == 404


def test_it_refuses_malformed_requests(model_code, start_engine, start_gateway, new_key):
    start_engine(model_code)
    gateway = start_gateway()
    _, key = new_key()
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{gateway.url}/v1/chat/completions"

    not_json = httpx.post(url, content=b"{nope", headers=auth)
    not_object = httpx.post(url, json=[1], headers=auth)
    no_messages = httpx.post(url, json={"model": "sales-bot"}, headers=auth)
    bad_stream = _chat(gateway, key, stream="yes")
    engine_refusal = _chat(gateway, key, max_tokens=-1)
    wrong_method = httpx.get(url, headers=auth)

    assert [r.status_code for r in (not_json, not_object, no_messages, bad_stream)] == [400] * 4
    assert not_json.json()["error"]["code"] == "invalid_json"
    assert no_messages.json()["error"]["param"] == "messages"
    assert engine_refusal.status_code == 400  # the engine's own 400, passed through
    assert wrong_method.status_code == 405


def test_it_refuses_a_body_too_large_even_without_content_length(
    model_code, start_engine, start_gateway, new_key
):
    start_engine(model_code)
    gateway = start_gateway(GATEWAY_MAX_BODY_BYTES="4096")
    _, key = new_key()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = f"{gateway.url}/v1/chat/completions"
    big = b'{"model":"sales-bot","messages":[{"role":"user","content":"' + b"a" * 8000 + b'"}]}'

    declared = httpx.post(url, content=big, headers=auth)
    chunked = httpx.post(url, content=iter([big[:3000], big[3000:6000], big[6000:]]), headers=auth)

    assert declared.status_code == chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "request_too_large"
    assert _chat(gateway, key).status_code == 200


def test_it_answers_503_with_retry_after_when_no_instance_is_ready(
    model_code, start_gateway, new_key
):
    gateway = start_gateway()

    answer = _chat(gateway, new_key()[1])

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.json()["error"]["code"] == "model_unavailable"


def test_it_answers_502_when_every_engine_fails_and_504_when_it_hangs(
    model_code, start_engine, start_gateway, new_key
):
    engine = start_engine(model_code)
    gateway = start_gateway(GATEWAY_UPSTREAM_TIMEOUT_S="0.5", GATEWAY_MAX_ATTEMPTS="2")
    _, key = new_key()

    engine.control(fail_next=1, fail_status=500)
    failed = _chat(gateway, key)
    engine.control(hang_next=1)
    hung = _chat(gateway, key)
    engine.proc.kill()
    engine.proc.proc.wait(5)
    unreachable = _chat(gateway, key)

    assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_error"
    assert hung.status_code == 504 and hung.json()["error"]["code"] == "upstream_timeout"
    assert unreachable.status_code == 502
    assert unreachable.json()["error"]["code"] == "upstream_unreachable"


def test_it_answers_429_with_retry_after_past_the_request_rate(
    model_code, start_engine, start_gateway, new_key
):
    start_engine(model_code)
    gateway = start_gateway()
    client = gateway.client(new_key(rpm_limit=2)[1])
    client.chat.completions.create(model="sales-bot", messages=HELLO)
    client.chat.completions.create(model="sales-bot", messages=HELLO)

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="sales-bot", messages=HELLO)

    assert refused.value.code == "rate_limit_exceeded"
    assert int(refused.value.response.headers["retry-after"]) >= 1


def test_metrics_need_the_metrics_token(model_code, start_engine, start_gateway, new_key):
    start_engine(model_code)
    gateway = start_gateway(GATEWAY_METRICS_TOKEN="scrape-me")
    gateway.client(new_key()[1]).chat.completions.create(model="sales-bot", messages=HELLO)

    anonymous = httpx.get(f"{gateway.url}/metrics")
    scraped = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": "Bearer scrape-me"})

    assert anonymous.status_code == 401
    assert scraped.status_code == 200
    assert 'gateway_requests_total{endpoint="chat",model="olivia' in scraped.text
    assert "gateway_time_to_first_token_seconds" in scraped.text
