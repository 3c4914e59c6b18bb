from __future__ import annotations

from tests.instances.conftest import local_provider, mock_model  # noqa: F401  (fixtures)
