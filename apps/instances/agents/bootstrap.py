"""What a machine boots with.

* Cloud machines get cloud-init user data that installs the agent and starts it as a systemd
  service with its one-time, short-lived bootstrap token (``python -m agent``). The token sits
  in a root-only environment file, never on a command line; nothing else secret is sent:
  provider credentials never leave the control plane.
* On-premise hosts are joined with a one-line command (``render_join_command``) that installs
  the agent and runs the host agent (``python -m agent.host``) with a one-time join token.

The output is JSON inside ``#cloud-config`` (JSON is YAML), so no value can break the YAML.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

from django.conf import settings

from apps.instances.agents.package import wheel_name
from apps.instances.providers.sizing import BYTES_PER_PARAM

if TYPE_CHECKING:
    from apps.instances.models import Instance
    from apps.models.models import LlmModel

AGENT_DIR = "/opt/inventiv"
AGENT_ENV_FILE = "/etc/inventiv/agent.env"
AGENT_UNIT = "inventiv-agent.service"
MIN_BOOT_VOLUME_GB = 100


def boot_volume_gb(llm_model: LlmModel) -> int:
    """Room for the OS image, the engine and the weights (downloaded once, plus a conversion
    copy), rounded up to 10 GB; at least 100 GB (GPU OS images need about 60)."""
    params_b = float(llm_model.parameter_count_b or 8)
    weights_gb = params_b * max(BYTES_PER_PARAM.get(llm_model.dtype, 2.0), 2.0)
    size = 60 + 2 * weights_gb
    return max(MIN_BOOT_VOLUME_GB, int(-(-size // 10) * 10))


def agent_pip_spec() -> str:
    """Where machines install the agent from: ``INVENTIV_AGENT_PIP_SPEC`` if set, else the
    wheel this control plane serves (built from its own ``agent/``)."""
    if settings.INVENTIV_AGENT_PIP_SPEC:
        return str(settings.INVENTIV_AGENT_PIP_SPEC)
    return f"{settings.AGENT_API_URL}/internal/agent/v1/dist/{wheel_name()}"


def _pip_specs() -> list[str]:
    return [agent_pip_spec(), *settings.INVENTIV_ENGINE_PIP_SPECS]


def _install_commands() -> str:
    venv = f"{AGENT_DIR}/venv"
    specs = " ".join(shlex.quote(spec) for spec in _pip_specs() if spec)
    return (
        f"set -eu; mkdir -p {AGENT_DIR}; "
        f"[ -x {venv}/bin/python ] || python3 -m venv {venv}; "
        f"{venv}/bin/pip install --quiet --upgrade pip; "
        f"{venv}/bin/pip install --quiet {specs}"
    )


def render_cloud_init(*, control_plane_url: str, bootstrap_token: str) -> str:
    """Cloud-init user data for one instance. Guarantees: the token is only in a 0600 root
    file; the agent is a systemd service that restarts on crash but not after its
    registration was refused (exit code 3)."""
    env = (
        f"INVENTIV_CONTROL_PLANE_URL={control_plane_url}\n"
        f"INVENTIV_BOOTSTRAP_TOKEN={bootstrap_token}\n"
    )
    unit = "\n".join(
        [
            "[Unit]",
            "Description=Inventiv agent",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            f"EnvironmentFile={AGENT_ENV_FILE}",
            f"ExecStart={AGENT_DIR}/venv/bin/python -m agent --state-dir /var/lib/inventiv-agent",
            "Restart=on-failure",
            "RestartSec=5",
            "RestartPreventExitStatus=3",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )
    config: dict[str, Any] = {
        "write_files": [
            {
                "path": AGENT_ENV_FILE,
                "permissions": "0600",
                "owner": "root:root",
                "content": env,
            },
            {"path": f"/etc/systemd/system/{AGENT_UNIT}", "permissions": "0644", "content": unit},
        ],
        "runcmd": [
            ["bash", "-c", _install_commands()],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", AGENT_UNIT],
        ],
    }
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def render_user_data(*, instance: Instance, bootstrap_token: str) -> str:
    """The user data for ``instance`` (called by the provisioning step)."""
    del instance  # the token is bound to the instance; nothing else of it goes to the machine
    return render_cloud_init(
        control_plane_url=settings.AGENT_API_URL,
        bootstrap_token=bootstrap_token,
    )


def render_join_command(*, join_token: str, control_plane_url: str | None = None) -> str:
    """The one-line shell command an operator runs (as root) on an on-premise host to install
    the agent and join it. The token is one-time and short-lived."""
    url = control_plane_url or settings.AGENT_API_URL
    return (
        f"sudo bash -c {shlex.quote(_install_commands())} && "
        f"sudo INVENTIV_JOIN_TOKEN={shlex.quote(join_token)} {AGENT_DIR}/venv/bin/python "
        f"-m agent.host --control-plane {shlex.quote(url)} "
        f"--state-file /var/lib/inventiv/host.json"
    )
