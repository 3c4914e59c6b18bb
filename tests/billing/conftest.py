"""Billing tests drive real gateways: the gateway fixtures, shared."""

from tests.gateway.conftest import (  # noqa: F401
    model_code,
    new_key,
    start_engine,
    start_gateway,
)
