"""The gateway fixtures (real mock engines, real gateway processes) for the autoscaling tests."""

from tests.gateway.conftest import model_code, new_key, start_engine, start_gateway

__all__ = ["model_code", "new_key", "start_engine", "start_gateway"]
