"""Fixtures for the autoscaling tests: the gateway's (real mock engines, real gateway processes)
and the instances' (the control plane as real processes, the local provider, real agents)."""

from tests.gateway.conftest import model_code, new_key, start_engine, start_gateway
from tests.instances.conftest import local_provider, platform

__all__ = ["local_provider", "model_code", "new_key", "platform", "start_engine", "start_gateway"]
