"""Budgets: set by organizations for themselves or one of their keys; enforced by the gateways'
reservations (``apps.gateway.budget``) and by the billing task's block (``budgets_enforce``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery, Sum
from django.utils import timezone

from apps.accounts.models import Organization
from apps.accounts.services import audit_record
from apps.billing.models import Budget, BudgetAlert, Price, UsageRollup
from apps.billing.services.prices import _CURRENCY
from apps.billing.services.rollups import usage_rollup
from apps.gateway.budget import (
    PICO,
    BudgetControl,
    budget_control,
    per_token_pico,
    period_of,
    to_pico,
)
from apps.gateway.models import ApiKey
from apps.models.models import LlmModel
from inventiv.errors import ApplicationError, Conflict
from inventiv.events import (
    BUDGET_ALERT,
    STAFF_GROUP,
    BudgetAlertEvent,
    org_group,
    publish_on_commit,
)

logger = logging.getLogger(__name__)
_MAX_LIMIT = Decimal("99999999.999999")


def month_start(moment: datetime | None = None) -> datetime:
    moment = (moment or timezone.now()).astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def budget_set(
    *,
    organization: Organization,
    api_key: ApiKey | None = None,
    currency: str,
    monthly_limit: Decimal | str | int,
    warn_at_percent: int = 80,
) -> Budget:
    """Create or change the organization's (or one key's) monthly budget; published to the
    gateways after commit. ``invalid_value`` for a bad currency, limit or threshold, or a key of
    another organization."""
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise ApplicationError("A currency is three capital letters (ISO 4217).", param="currency")
    try:
        limit = Decimal(monthly_limit)
    except (ArithmeticError, TypeError, ValueError):
        raise ApplicationError("Not a decimal amount.", param="monthly_limit") from None
    if not limit.is_finite() or limit < 0 or limit > _MAX_LIMIT or limit != round(limit, 6):
        raise ApplicationError(
            f"Between 0 and {_MAX_LIMIT}, at most 6 decimal places.", param="monthly_limit"
        )
    if not 1 <= warn_at_percent <= 100:
        raise ApplicationError("Between 1 and 100.", param="warn_at_percent")
    if api_key is not None and api_key.organization_id != organization.id:
        raise ApplicationError("The key belongs to another organization.", param="api_key")
    try:
        with transaction.atomic():
            budget, _ = Budget.objects.update_or_create(
                organization=organization,
                api_key=api_key,
                defaults={
                    "currency": currency,
                    "monthly_limit": limit,
                    "warn_at_percent": warn_at_percent,
                },
            )
            audit_record(
                action="budget.set",
                organization=organization,
                target=budget,
                data={
                    "api_key": api_key.pk if api_key else None,
                    "currency": currency,
                    "monthly_limit": str(limit),
                    "warn_at_percent": warn_at_percent,
                },
            )
    except IntegrityError:
        raise Conflict("This budget was just created by someone else; retry.") from None
    transaction.on_commit(lambda: budget_publish(budget=budget))
    return budget


def budget_delete(*, budget: Budget) -> None:
    scope, scope_id = _scope(budget)
    audit_record(action="budget.delete", organization_id=budget.organization_id, target=budget)
    budget.delete()
    control = budget_control()

    def unpublish() -> None:
        control.set_limit(scope, scope_id, None)
        control.set_blocked(scope, scope_id, period_of(), False)

    transaction.on_commit(unpublish)


def _scope(budget: Budget) -> tuple[str, int]:
    if budget.api_key_id:
        return "key", budget.api_key_id
    return "organization", budget.organization_id


@dataclass(frozen=True)
class BudgetState:
    budget: Budget
    spend: Decimal  # month to date, in the budget's currency
    blocked: bool


def budget_spend(*, budget: Budget, since: datetime | None = None) -> Decimal:
    """Month-to-date spend of a budget's scope in its currency, from the rollups."""
    rollups = UsageRollup.objects.filter(
        organization_id=budget.organization_id,
        hour__gte=since or month_start(),
        currency=budget.currency,
    )
    if budget.api_key_id:
        rollups = rollups.filter(api_key_id=budget.api_key_id)
    total = rollups.aggregate(total=Sum("spend"))["total"]
    return Decimal(total or 0)


def prices_publish(*, control: BudgetControl | None = None) -> int:
    """Give the gateways each model code's price in force now (pico per token)."""
    control = control or budget_control()
    now = timezone.now()
    current = Price.objects.filter(model_code_id=OuterRef("id"), valid_from__lte=now).order_by(
        "-valid_from"
    )
    rows = (
        LlmModel.objects.annotate(
            p_in=Subquery(current.values("input_per_million")[:1]),
            p_out=Subquery(current.values("output_per_million")[:1]),
        )
        .filter(p_in__isnull=False)
        .values_list("id", "p_in", "p_out")
    )
    count = 0
    for model_code_id, p_in, p_out in rows:
        control.set_price(model_code_id, per_token_pico(p_in), per_token_pico(p_out))
        count += 1
    return count


def budgets_enforce(
    *, rollup: bool = True, control: BudgetControl | None = None
) -> list[BudgetState]:
    """The orchestrator's budget pass (beat ``budgets-enforce``; safe to run twice, or two at
    once): roll recent usage up, publish prices and limits to the gateways, raise their spend
    counters to the database's month-to-date spend, and for each budget block its key or
    organization for the rest of the month once spend reaches the limit (every gateway refuses
    it from the next request: the block is read on each reservation), unblock it when the
    limit was raised, and record the warning thresholds it crossed (``BudgetAlert``, once per
    month and threshold). Month turns need nothing: blocks and counters are per month."""
    control = control or budget_control()
    if rollup:
        usage_rollup()
    prices_publish(control=control)
    start = month_start()
    month = date(start.year, start.month, 1)
    states = []
    for budget in Budget.objects.order_by("id"):
        states.append(budget_publish(budget=budget, control=control, month=month))
    return states


def budget_publish(
    *, budget: Budget, control: BudgetControl | None = None, month: date | None = None
) -> BudgetState:
    """One budget to the gateways: its limit, its spend floor, its block for this month (set
    once spend reaches the limit, lifted once the limit is above it), and its alerts."""
    control = control or budget_control()
    start = month_start()
    month = month or date(start.year, start.month, 1)
    period = period_of()
    scope, scope_id = _scope(budget)
    spend = budget_spend(budget=budget, since=start)
    control.set_limit(scope, scope_id, to_pico(budget.monthly_limit))
    control.raise_spent(scope, scope_id, period, to_pico(spend))
    live, _ = control.spent(scope, scope_id, period)
    spend = max(spend, Decimal(live) / PICO)
    blocked = spend >= budget.monthly_limit
    control.set_blocked(scope, scope_id, period, blocked)
    if budget.monthly_limit > 0:
        percent = spend * 100 / budget.monthly_limit
        for threshold in sorted({budget.warn_at_percent, 100}):
            if percent >= threshold:
                _, created = BudgetAlert.objects.get_or_create(
                    budget=budget, month=month, percent=threshold, defaults={"spend": spend}
                )
                if created:
                    publish_on_commit(
                        [org_group(budget.organization_id), STAFF_GROUP],
                        BUDGET_ALERT,
                        BudgetAlertEvent(
                            budget_id=budget.id,
                            organization_id=budget.organization_id,
                            api_key_id=budget.api_key_id,
                            percent=threshold,
                            spend=str(spend),
                            monthly_limit=str(budget.monthly_limit),
                            currency=budget.currency,
                            at=timezone.now().isoformat(),
                        ),
                    )
                    logger.warning(
                        "budget %s (%s %s) at %s%% of %s %s",
                        budget.id, scope, scope_id, threshold, budget.monthly_limit,
                        budget.currency,
                    )  # fmt: skip
    return BudgetState(budget, spend, blocked)
