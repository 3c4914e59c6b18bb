"""Billing is exact: through two gateways, with failed, retried, abandoned and duplicated
requests, billed tokens equal what the engines generated and spend equals tokens x price."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from apps.billing.models import Price, UsageRecord, UsageRollup
from apps.billing.services import usage_records_upsert
from apps.billing.services.budgets import budgets_enforce, prices_publish
from apps.gateway.budget import PICO, budget_control, period_of
from apps.gateway.usage_record import UsageRecordData
from tests.gateway.conftest import flushed_usage

IN, OUT = Decimal("0.37"), Decimal("1.13")


def test_spend_equals_generated_tokens_times_the_price_to_the_cent(
    model_code, start_engine, start_gateway, new_key
):
    # Given a priced model code on two engines (one failing a few requests), two gateways
    Price.objects.create(
        model_code=model_code, currency="EUR", input_per_million=IN, output_per_million=OUT,
        valid_from=timezone.now() - timedelta(days=1),
    )  # fmt: skip
    prices_publish()
    engines = [
        start_engine(model_code, token_rate=400.0),
        start_engine(model_code, token_rate=400.0),
    ]
    gateways = [start_gateway(), start_gateway()]
    key, secret = new_key()
    engines[0].control(fail_next=3, fail_status=500)

    # When plain, streamed, abandoned, completion and embedding requests go through both
    sent = 0
    for i in range(8):
        client = gateways[i % 2].client(secret)
        messages = [{"role": "user", "content": "word " * (i + 1)}]
        client.chat.completions.create(model="sales-bot", messages=messages, max_tokens=i + 1)
        list(client.chat.completions.create(
            model="sales-bot", messages=messages, max_tokens=i + 2, stream=True
        ))  # fmt: skip
        abandoned = client.chat.completions.create(
            model="sales-bot", messages=messages, max_tokens=20, stream=True
        )
        next(iter(abandoned))
        abandoned.close()
        client.completions.create(model="sales-bot", prompt="p " * i + "q", max_tokens=3)
        client.embeddings.create(model="sales-bot", input="x " * (i + 1))
        sent += 5
    records = flushed_usage(sent)
    # ...and every record is delivered again (a replayed flush)
    usage_records_upsert(records=[_data(r) for r in records])
    budgets_enforce()

    # Then tokens, rollups, and the gateways' settled spend all agree with the engines, exactly
    prompt = sum(e.generated()[0] for e in engines)
    completion = sum(e.generated()[1] for e in engines)
    expected = (prompt * IN + completion * OUT) / 1_000_000
    assert UsageRecord.objects.count() == sent
    rollups = list(UsageRollup.objects.all())
    assert sum(r.prompt_tokens for r in rollups) == prompt
    assert sum(r.completion_tokens for r in rollups) == completion
    assert sum(r.spend for r in rollups) == expected
    spent, reserved = budget_control().spent("key", key.id, period_of())
    assert (Decimal(spent) / PICO, reserved) == (expected, 0)


def _data(record: UsageRecord) -> UsageRecordData:
    return UsageRecordData(
        request_id=record.request_id, organization_id=record.organization_id,
        api_key_id=record.api_key_id, model_code_id=record.model_code_id,
        model_code=record.model_code,
        instance_id=str(record.instance_id) if record.instance_id else None,
        endpoint=record.endpoint, stream=record.stream, prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens, status_code=record.status_code,
        error_code=record.error_code, attempts=record.attempts, latency_ms=record.latency_ms,
        ttft_ms=record.ttft_ms, started_at=record.started_at.timestamp(), seq=record.seq,
    )  # fmt: skip
