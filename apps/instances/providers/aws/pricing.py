"""Hourly prices of EC2 instance types (USD): the provider's ``prices`` setting first, then
the AWS Pricing API (optional: it needs its own permission), then a small fallback table."""

from __future__ import annotations

import json
import logging
from decimal import Decimal

from apps.instances.providers.aws.transport import AwsClients

logger = logging.getLogger(__name__)

# On-demand Linux prices (USD/h) used only when the Pricing API cannot be read and the
# provider settings give none. Operators should prefer ``prices`` or Pricing API access.
FALLBACK_PRICES = {
    "g4dn.xlarge": "0.526",
    "g5.xlarge": "1.006",
    "g5.2xlarge": "1.212",
    "g5.12xlarge": "5.672",
    "g5.48xlarge": "16.288",
    "g6.xlarge": "0.805",
    "g6e.xlarge": "1.861",
    "p4d.24xlarge": "32.7726",
    "p5.48xlarge": "98.32",
}


def hourly_price(clients: AwsClients, code: str, *, overrides: dict[str, str]) -> Decimal:
    """The on-demand Linux price of ``code`` in the clients' region; never raises."""
    if code in overrides:
        return Decimal(overrides[code])
    try:
        price = _pricing_api_price(clients, code)
    except Exception as exc:  # the Pricing API is optional: fall back quietly
        logger.info("aws: no price from the Pricing API for %s (%s)", code, type(exc).__name__)
        price = None
    return price if price is not None else Decimal(FALLBACK_PRICES.get(code, "0"))


def _pricing_api_price(clients: AwsClients, code: str) -> Decimal | None:
    pricing = clients.client("pricing", "us-east-1")
    filters = [
        ("instanceType", code),
        ("regionCode", clients.region),
        ("operatingSystem", "Linux"),
        ("tenancy", "Shared"),
        ("preInstalledSw", "NA"),
        ("capacitystatus", "Used"),
    ]
    response = pricing.get_products(
        ServiceCode="AmazonEC2",
        Filters=[{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in filters],
        MaxResults=1,
    )
    for raw in response.get("PriceList", []):
        product = json.loads(raw)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if usd:
                    return Decimal(usd).quantize(Decimal("0.0001"))
    return None
