"""A fast mock of vLLM's OpenAI-compatible server, for tests and local development.

Run it with ``python -m agent.mock_engine``; see ``agent/README.md`` for its endpoints, its
engine arguments, and the fault-injection controls under ``/mock/``.
"""

from agent.mock_engine.app import MockConfig, MockEngine

__all__ = ["MockConfig", "MockEngine"]
