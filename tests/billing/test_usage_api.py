"""Usage through the REST API: org-scoped records and totals."""

from __future__ import annotations

from datetime import UTC, datetime

from apps.accounts.models import Organization
from apps.billing.models import UsageRecord


def _usage(org: Organization, request_id: str, model: str, tokens: int) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=request_id,
        organization=org,
        model_code=model,
        endpoint="chat",
        prompt_tokens=tokens,
        completion_tokens=tokens,
        total_tokens=2 * tokens,
        status_code=200,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_it_lists_and_sums_only_my_organizations_usage(api, owner_org, stranger):
    theirs = Organization.objects.get(memberships__user=stranger)
    _usage(owner_org, "r1", "sales-bot", 3)
    _usage(owner_org, "r2", "sales-bot", 4)
    _usage(owner_org, "r3", "other-bot", 1)
    _usage(theirs, "r4", "sales-bot", 100)

    listed = api.get("/api/v1/usage/?model_code=sales-bot").json()
    summary = api.get("/api/v1/usage/summary/").json()["data"]

    assert sorted(r["request_id"] for r in listed["results"]) == ["r1", "r2"]
    assert summary == [
        {"model_code": "other-bot", "requests": 1, "prompt_tokens": 1, "completion_tokens": 1,
         "total_tokens": 2},
        {"model_code": "sales-bot", "requests": 2, "prompt_tokens": 7, "completion_tokens": 7,
         "total_tokens": 14},
    ]  # fmt: skip
