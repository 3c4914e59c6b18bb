from tests.instances.conftest import local_provider, mock_model

__all__ = ["local_provider", "mock_model"]
