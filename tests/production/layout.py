"""compose.yaml, .env.example and the Dockerfile, read as an operator's machine would, so that
the production-layout tests run exactly what those files say (they cannot drift).

There is no Docker engine here: a role is the service's command run as a host process, with the
service's environment. What a container would provide differently is substituted, explicitly
and only there (``Substitutions``): the addresses of the ``postgres`` and ``redis`` services, the
container ports (free ports here), the state-directory volume and the image's static root
(temporary directories here), and the user (``nobody`` when the tests run as root).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("migrate", "web", "gateway", "worker", "beat", "flower")
# The ports the services listen on inside their containers, and who listens there.
CONTAINER_PORTS = {"web": 8000, "gateway": 8002, "flower": 5555}
NOBODY_UID = 65534
NOBODY_GID = 65534


def _interpolate(value: Any) -> Any:
    if isinstance(value, str):
        assert "$" not in value.replace("$$", ""), f"interpolated from the host's shell: {value}"
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


def compose() -> dict[str, Any]:
    """compose.yaml with compose's own interpolation applied to its values: ``$$`` is a literal
    ``$``. Any other ``$`` (interpolation from the operator's shell) is refused: none is used."""
    loaded: dict[str, Any] = _interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text()))
    return loaded


def env_example() -> dict[str, str]:
    """``.env.example`` as compose's ``env_file`` reads it: ``NAME=value`` lines, no quotes."""
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not NAME=value: {line!r}"
        values[name.strip()] = value
    return values


def required_variables() -> list[str]:
    """The variables ``.env.example`` marks ``REQUIRED:`` (the comment block just above them):
    what an operator must fill in before the first start."""
    names: list[str] = []
    marked = False
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#"):
            marked = marked or line.startswith("# REQUIRED:")
        elif "=" in line:
            if marked:
                names.append(line.partition("=")[0])
            marked = False
        else:
            marked = False
    return names


@dataclass
class Dockerfile:
    env: dict[str, str]
    user: str
    run: list[str]


def dockerfile() -> Dockerfile:
    env: dict[str, str] = {}
    user = "root"
    run: list[str] = []
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                name, _, value = token.partition("=")
                env[name] = value
        elif line.startswith("USER "):
            user = line[5:].strip()
        elif line.startswith("RUN "):
            run.append(line[4:])
    return Dockerfile(env=env, user=user, run=run)


@dataclass
class Substitutions:
    """What differs between a container and a host process, and nothing else."""

    database_url: str
    redis_url: str
    ports: dict[str, int]
    state_dir: Path
    static_root: Path
    # The operator's edits of .env (the REQUIRED variables) and the documented switches.
    operator: dict[str, str] = field(default_factory=dict)

    def port_map(self) -> dict[int, int]:
        return {CONTAINER_PORTS[name]: port for name, port in self.ports.items()}

    def text(self, value: str) -> str:
        """Container ports to this run's ports, in a command or a health check."""
        for inside, outside in self.port_map().items():
            value = re.sub(rf"(?<![0-9]){inside}(?![0-9])", str(outside), value)
        return value


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def service_env(name: str, subs: Substitutions, runtime: Runtime) -> dict[str, str]:
    """The environment a container of service ``name`` gets: the image's ENV, then .env
    (``env_file``), then the service's ``environment``; with the substitutions."""
    svc = service(name)
    assert svc.get("env_file") == ".env", f"{name}: reads .env"
    env = {
        "PATH": f"{runtime.bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": runtime.home,
        "HOSTNAME": runtime.hostname,
        "LANG": "C.UTF-8",
    }
    env.update(dockerfile().env)
    env.update(env_example())
    env.update({k: str(v) for k, v in (svc.get("environment") or {}).items()})
    assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert env["INVENTIV_STATE_DIR"] == "/var/lib/inventiv"
    env["DATABASE_URL"] = subs.database_url
    env["REDIS_URL"] = subs.redis_url
    env["INVENTIV_STATE_DIR"] = str(subs.state_dir)
    env["STATIC_ROOT"] = str(subs.static_root)
    env.update(subs.operator)
    # A service's tmpfs mounts: a fresh directory of this run's, the image user's, for every
    # variable that names one (PROMETHEUS_MULTIPROC_DIR=/run/prometheus).
    for mount in svc.get("tmpfs") or []:
        local = subs.state_dir.parent / f"tmpfs-{name}{mount.replace('/', '-')}"
        local.mkdir(exist_ok=True)
        give_to(runtime, local)
        env = {k: str(local) if v == mount else v for k, v in env.items()}
    return env


def command(name: str, subs: Substitutions) -> list[str]:
    return [subs.text(arg) for arg in service(name)["command"]]


def healthcheck(name: str, subs: Substitutions) -> tuple[list[str], float] | None:
    """The service's health check as an argv (``CMD`` as is, ``CMD-SHELL`` through ``sh -c``
    as Docker runs it) and its timeout in seconds."""
    check = service(name).get("healthcheck")
    if not check:
        return None
    test = [subs.text(arg) for arg in check["test"]]
    timeout = float(str(check.get("timeout", "30s")).removesuffix("s"))
    if test[0] == "CMD":
        return test[1:], timeout
    assert test[0] == "CMD-SHELL" and len(test) == 2, test
    return ["/bin/sh", "-c", test[1]], timeout


@dataclass
class Runtime:
    """Where the image's ``python``, ``celery`` and ``uvicorn`` come from, and as whom roles run.

    As root: a venv of the system's Python 3.11 (the suite's interpreter lives under /root,
    which ``nobody`` cannot read) whose only content is a path file onto this project's
    installed packages, with ``celery`` and ``uvicorn`` scripts; the roles run as ``nobody``
    like the image's ``USER nobody``. Otherwise: the suite's own interpreter, as this user.
    """

    bin_dir: Path
    uid: int | None
    gid: int | None
    home: str
    hostname: str

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def make_runtime(tmp: Path) -> Runtime:
    hostname = os.uname().nodename
    system_python = Path("/usr/bin/python3.11")
    if os.geteuid() != 0 or not system_python.exists():
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        venv_bin = Path(sys.executable).parent
        for tool in ("python", "celery", "uvicorn"):
            (bin_dir / tool).symlink_to(sys.executable if tool == "python" else venv_bin / tool)
        return Runtime(bin_dir, None, None, os.environ.get("HOME", "/"), hostname)
    venv = tmp / "image-python"
    subprocess.run([str(system_python), "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = next(Path(sys.prefix).glob("lib/python3.11/site-packages"))
    (venv / "lib/python3.11/site-packages/inventiv-image.pth").write_text(
        f"import site; site.addsitedir({str(site_packages)!r})\n"
    )
    python = venv / "bin" / "python"
    for tool in ("celery", "uvicorn"):  # the installed console scripts, on this interpreter
        script = venv / "bin" / tool
        body = (Path(sys.executable).parent / tool).read_text().split("\n", 1)[1]
        script.write_text(f"#!{python}\n{body}")
        script.chmod(0o755)
    for path in (tmp, venv):
        path.chmod(0o755)
    return Runtime(venv / "bin", NOBODY_UID, NOBODY_GID, "/nonexistent", hostname)


def give_to(runtime: Runtime, path: Path, mode: int = 0o700) -> None:
    """Make ``path`` the runtime user's, like a volume the image's user owns."""
    if runtime.uid is not None:
        shutil.chown(path, runtime.uid, runtime.gid)
    path.chmod(mode)
