"""The environment an agent is started with: an allow-list, never the parent's whole
environment.

Whoever starts an instance agent (the control plane's local provider, the on-premise host
agent) runs with secrets of its own in its environment: ``SECRET_KEY``,
``INVENTIV_ENCRYPTION_KEYS``, ``DATABASE_URL``, ``REDIS_URL``, the gateway's metrics token, cloud
credentials (``AWS_*``, ``SCW_*``), the host's join token... The agent, and the engine it starts
(which inherits the agent's environment), get only what is listed here, plus the variables
the starter sets explicitly (the one-time bootstrap token, the control-plane URL, the GPUs).
"""

from __future__ import annotations

from collections.abc import Mapping

# Passed through by name: the process basics, the locale, Python's own settings and venv.
ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUTF8",
        "PYTHONIOENCODING",
        # the agent's own settings (agent/cli.py)
        "INVENTIV_LOG_LEVEL",
        "INVENTIV_ADVERTISE_HOST",
    }
)
# Passed through by prefix: the locale (LC_*), the agent's settings, and what the engine
# reads on a GPU machine (CUDA/NCCL devices and tuning; vLLM's and Hugging Face's settings,
# e.g. HF_HOME for the model cache, HF_TOKEN for gated models).
ALLOWED_PREFIXES = ("LC_", "INVENTIV_AGENT_", "CUDA_", "NCCL_", "VLLM_", "HF_")


def agent_environment(
    base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The allow-listed part of ``base``, then ``extra`` (set by the starter, always kept)."""
    env = {
        name: value
        for name, value in base.items()
        if name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)
    }
    env.update(extra or {})
    return env
