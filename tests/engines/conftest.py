from tests.instances.conftest import local_provider, mock_model
from tests.providers.conftest import aws, aws_provider, fake_scw, scw_provider

__all__ = ["aws", "aws_provider", "fake_scw", "local_provider", "mock_model", "scw_provider"]
