"""FinOps reads for operators: what the machines cost, per instance and model code, and the
margin of each model code (revenue at its prices minus its machines' cost).

An instance costs its ``hourly_price`` (copied from its instance type when it was placed) from
the moment it entered ``booting`` (the machine exists at the provider) until it entered
``terminated``, taken from its append-only history (``InstanceEvent``); a live instance accrues
up to now. Cost accrues per whole minute started within the window (a machine billed for 61
seconds costs 2 minutes), clipped to the window ``[since, until)``. While it is
``powered_off`` (scaled to zero by power-off, docs/autoscaling.md) it costs only what the
provider still bills, its kept disk (``provider_data["powered_off_hourly_price"]``, recorded
at power-off), until it is powered on or terminated.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Q, Sum

from apps.billing.models import UsageRollup
from apps.instances.choices import InstanceStatus
from apps.instances.models import Instance, InstanceEvent

_START = InstanceStatus.BOOTING
_END = InstanceStatus.TERMINATED
_OFF = InstanceStatus.POWERED_OFF
_LEAVE_OFF = InstanceStatus.TERMINATING  # a powered-off machine leaves to booting or this
_CENTS = Decimal("0.000001")


@dataclass(frozen=True)
class InstanceCost:
    instance_id: str
    organization_id: int
    model_code_id: int
    model_code: str
    currency: str
    hourly_price: Decimal
    minutes: int
    cost: Decimal
    powered_off_minutes: int = 0  # at the kept disk's price, included in ``cost``


def _currency(instance: Instance) -> str:
    return instance.instance_type.currency if instance.instance_type is not None else "EUR"


def instance_costs(*, since: datetime, until: datetime) -> list[InstanceCost]:
    """Every instance that held a machine within ``[since, until)``, with its cost there."""
    instances = (
        Instance.objects.filter(Q(terminated_at__isnull=True) | Q(terminated_at__gte=since))
        .filter(created_at__lt=until)
        .select_related("llm_model", "instance_type")
    )
    by_id = {i.id: i for i in instances}
    spans: dict[uuid.UUID, list[datetime | None]] = {}
    off: dict[uuid.UUID, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    events = (
        InstanceEvent.objects.filter(
            instance_id__in=list(by_id), to_status__in=[_START, _END, _OFF, _LEAVE_OFF]
        )
        .order_by("id")
        .values_list("instance_id", "to_status", "created_at")
    )
    for instance_id, status, at in events:
        span = spans.setdefault(instance_id, [None, None])
        if status == _START and span[0] is None:
            span[0] = at
        elif status == _END:
            span[1] = at
        kept = off[instance_id]
        if status == _OFF:
            kept.append((at, None))
        elif kept and kept[-1][1] is None:
            kept[-1] = (kept[-1][0], at)  # powered on again, or terminated
    costs = []
    for instance_id, (start, end) in spans.items():
        if start is None:
            continue  # never had a machine (provisioning failed): nothing billed
        lo, hi = max(start, since), min(end or until, until)
        if hi <= lo:
            continue
        instance = by_id[instance_id]
        off_s = sum(
            max(0.0, (min(b or hi, hi) - max(a, lo)).total_seconds()) for a, b in off[instance_id]
        )
        minutes = math.ceil(((hi - lo).total_seconds() - off_s) / 60)
        off_minutes = math.ceil(off_s / 60)
        cost = (
            instance.hourly_price * minutes / 60 + _kept_price(instance) * off_minutes / 60
        ).quantize(_CENTS)
        costs.append(
            InstanceCost(
                str(instance.id),
                instance.organization_id,
                instance.llm_model_id,
                instance.llm_model.name,
                _currency(instance),
                instance.hourly_price,
                minutes,
                cost,
                off_minutes,
            )
        )
    return sorted(costs, key=lambda c: (c.model_code_id, c.instance_id))


def _kept_price(instance: Instance) -> Decimal:
    """What the instance costs per hour while powered off (recorded at power-off)."""
    return Decimal(str((instance.provider_data or {}).get("powered_off_hourly_price", "0")))


@dataclass(frozen=True)
class ModelCodeMargin:
    model_code_id: int
    model_code: str
    organization_id: int
    currency: str
    machine_minutes: int
    cost: Decimal
    prompt_tokens: int
    completion_tokens: int
    revenue: Decimal
    cost_per_million_tokens: Decimal | None  # None when no token was served
    margin: Decimal


def model_code_margins(*, since: datetime, until: datetime) -> list[ModelCodeMargin]:
    """Per model code over ``[since, until)``: machine cost, tokens served and revenue (the
    rollups' spend, whole hours starting in the window), cost per million tokens and the
    margin (revenue - cost). Revenue and cost are compared in the instance type's currency;
    a model code priced in another one is reported with its price currency and no conversion."""
    cost: dict[int, Decimal] = defaultdict(Decimal)
    minutes: dict[int, int] = defaultdict(int)
    names: dict[int, tuple[str, int, str]] = {}
    for item in instance_costs(since=since, until=until):
        cost[item.model_code_id] += item.cost
        minutes[item.model_code_id] += item.minutes
        names[item.model_code_id] = (item.model_code, item.organization_id, item.currency)
    served = (
        UsageRollup.objects.filter(hour__gte=since, hour__lt=until)
        .exclude(model_code_id=0)
        .values("model_code_id", "model_code", "organization_id", "currency")
        .annotate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"), revenue=Sum("spend"))
    )
    tokens: dict[int, tuple[int, int, Decimal]] = {}
    for row in served:
        held = tokens.get(row["model_code_id"], (0, 0, Decimal(0)))
        tokens[row["model_code_id"]] = (
            held[0] + row["p"],
            held[1] + row["c"],
            held[2] + Decimal(row["revenue"] or 0),
        )
        names.setdefault(
            row["model_code_id"],
            (row["model_code"], row["organization_id"], row["currency"] or "EUR"),
        )
    margins = []
    for model_code_id in sorted(names):
        name, organization_id, currency = names[model_code_id]
        prompt, completion, revenue = tokens.get(model_code_id, (0, 0, Decimal(0)))
        total = prompt + completion
        spent = cost[model_code_id]
        margins.append(
            ModelCodeMargin(
                model_code_id,
                name,
                organization_id,
                currency,
                minutes[model_code_id],
                spent,
                prompt,
                completion,
                revenue.quantize(_CENTS),
                (spent * 1_000_000 / total).quantize(_CENTS) if total else None,
                (revenue - spent).quantize(_CENTS),
            )
        )
    return margins


def cost_forecast(
    *, now: datetime, month_start: datetime, month_end: datetime
) -> dict[str, Decimal]:
    """Month-to-date machine cost, the hourly burn of the machines held now, and the month's
    forecast (month to date + burn until the month's end), all currencies summed as one."""
    to_date = sum((c.cost for c in instance_costs(since=month_start, until=now)), Decimal(0))
    live = Instance.objects.filter(terminated_at__isnull=True, events__to_status=_START)
    burn = Decimal(
        live.exclude(status=_OFF).distinct().aggregate(total=Sum("hourly_price"))["total"] or 0
    )
    burn += sum((_kept_price(i) for i in live.filter(status=_OFF).distinct()), Decimal(0))
    hours_left = Decimal((month_end - now).total_seconds()) / 3600
    return {
        "month_to_date_cost": to_date.quantize(_CENTS),
        "hourly_burn": burn.quantize(_CENTS),
        "forecast": (to_date + burn * hours_left).quantize(_CENTS),
    }
