"""Writes for prices: a model code's price per million tokens, with history."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.services import audit_record
from apps.billing.models import Price
from apps.gateway.budget import budget_control, per_token_pico
from apps.models.models import LlmModel
from inventiv.errors import ApplicationError, Conflict

_CURRENCY = re.compile(r"^[A-Z]{3}$")
# A price may start this long before "now" (clock skew between the operator and us); earlier
# would re-price requests already served.
BACKDATE_TOLERANCE = timedelta(minutes=1)
_MAX = Decimal("999999.999999")


def _amount(value: Decimal | str | int, param: str) -> Decimal:
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ApplicationError("Not a decimal amount.", param=param) from None
    if not amount.is_finite() or amount < 0 or amount > _MAX:
        raise ApplicationError(f"Must be between 0 and {_MAX}.", param=param)
    if amount != amount.quantize(Decimal("0.000001")):
        raise ApplicationError("At most 6 decimal places.", param=param)
    return amount


def price_validate(
    *,
    currency: str,
    input_per_million: Decimal | str | int,
    output_per_million: Decimal | str | int,
    valid_from: datetime | None = None,
) -> tuple[Decimal, Decimal, datetime]:
    """The checked amounts and start of a price (see ``price_set``); ``ApplicationError``."""
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise ApplicationError("A currency is three capital letters (ISO 4217).", param="currency")
    inp = _amount(input_per_million, "input_per_million")
    out = _amount(output_per_million, "output_per_million")
    now = timezone.now()
    start = valid_from or now
    if timezone.is_naive(start):
        raise ApplicationError("valid_from needs a time zone.", param="valid_from")
    if start < now - BACKDATE_TOLERANCE:
        raise ApplicationError(
            "valid_from is in the past: served usage keeps the price it was served at.",
            param="valid_from",
        )
    return inp, out, start


def price_set(
    *,
    model_code: LlmModel,
    currency: str,
    input_per_million: Decimal | str | int,
    output_per_million: Decimal | str | int,
    valid_from: datetime | None = None,
) -> Price:
    """Set a model code's price from ``valid_from`` (default now) on: a new row, so that usage
    served earlier keeps its price. Refuses a start in the past (it would re-price served
    usage: ``invalid_value``), a naive datetime, a currency that is not three capital letters,
    and a second price starting at the same instant (``conflict``)."""
    inp, out, start = price_validate(
        currency=currency,
        input_per_million=input_per_million,
        output_per_million=output_per_million,
        valid_from=valid_from,
    )
    try:
        with transaction.atomic():
            price = Price.objects.create(
                model_code=model_code,
                currency=currency,
                input_per_million=inp,
                output_per_million=out,
                valid_from=start,
            )
            audit_record(
                action="price.set",
                organization_id=model_code.organization_id,
                target=model_code,
                data={
                    "currency": currency,
                    "input_per_million": str(inp),
                    "output_per_million": str(out),
                    "valid_from": start.isoformat(),
                },
            )
    except IntegrityError:
        raise Conflict("A price of this model code already starts then.") from None
    if start <= timezone.now():
        # The gateways reserve at it from now on (a later start: the billing pass publishes it).
        transaction.on_commit(
            lambda: budget_control().set_price(
                model_code.id, per_token_pico(inp), per_token_pico(out)
            )
        )
    return price
