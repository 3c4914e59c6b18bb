"""Fixtures for the autoscaling tests: the gateway's (real mock engines, real gateway processes),
the instances' (the control plane as real processes, the local provider, real agents) and the
providers' (the Scaleway fake API with the real SDK, moto for AWS)."""

from tests.gateway.conftest import model_code, new_key, start_engine, start_gateway
from tests.instances.conftest import local_provider, platform
from tests.providers.conftest import (
    _fast_provider_polling,
    aws,
    aws_provider,
    fake_scw,
    scw_provider,
)

__all__ = [
    "_fast_provider_polling",
    "aws",
    "aws_provider",
    "fake_scw",
    "local_provider",
    "model_code",
    "new_key",
    "platform",
    "scw_provider",
    "start_engine",
    "start_gateway",
]
