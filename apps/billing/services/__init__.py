"""Writes for billing: usage (flushed from the gateways), prices, rollups, budgets."""

from apps.billing.services.prices import price_set
from apps.billing.services.usage import usage_flush, usage_records_upsert

__all__ = ["price_set", "usage_flush", "usage_records_upsert"]
