"""The production layout as an operator runs it: compose.yaml and .env.example to the letter.

Every role (migrate, web, gateway, worker, beat, flower) runs as a separate process with its
service's command and environment, as ``nobody`` (the image's user) when the suite runs as
root, with a fresh state directory owned by that user, a fresh PostgreSQL database and a
private Redis key prefix. Each health check of compose.yaml runs until healthy. Then, with no
hand-made row (the first user signs up on the portal), a model code is deployed on the local
provider through the REST API and an answer is streamed through the gateway role with the
official openai SDK. What differs from containers is listed in ``tests.production.layout``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from django.conf import settings
from openai import APIStatusError, OpenAI

from tests.processes import free_port, wait_for
from tests.production import layout

pytestmark = pytest.mark.slow

PUBLIC_HOST = "inventiv.example.com"  # .env.example's ALLOWED_HOSTS, the operator's DNS name


class Role:
    """One service's process; its output goes to ``<log_dir>/<name>.log``."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], runtime: layout.Runtime, logs: Path
    ) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=layout.ROOT,  # the image's WORKDIR /app holds this tree
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **runtime.popen_kwargs(),
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


def _kill_tagged(instance_ids: set[str]) -> None:
    """The local provider's agents run in their own sessions: kill those of our instances."""
    needles = {f"INVENTIV_INSTANCE_TAG={iid}".encode() for iid in instance_ids}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needles & set(environ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database of its own, named like the suite's (tests/plugin.py drops it if we die)."""
    admin_url = os.environ["DATABASE_URL"]
    name = f"{settings.DATABASES['default']['TEST']['NAME']}_compose"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_healthy(
    name: str,
    role: Role,
    env: dict[str, str],
    subs: layout.Substitutions,
    runtime: layout.Runtime,
    deadline: float,
) -> float:
    check = layout.healthcheck(name, subs)
    assert check is not None, f"{name} has no health check in compose.yaml"
    argv, timeout = check
    started = time.monotonic()
    last = ""
    while time.monotonic() < deadline:
        assert role.alive(), f"{name} exited ({role.proc.returncode}):\n{role.log()}"
        try:
            done = subprocess.run(
                argv,
                cwd=layout.ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                **runtime.popen_kwargs(),
            )
        except subprocess.TimeoutExpired:
            last = "health check timed out"
        else:
            if done.returncode == 0:
                return time.monotonic() - started
            last = (done.stdout + done.stderr)[-1500:]
        time.sleep(1)
    raise AssertionError(f"{name} never became healthy; last check: {last}\n{role.log()}")


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A directory the image's user can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="inventiv-compose-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_compose_roles_start_become_healthy_and_serve_a_streamed_answer(
    fresh_database: str, sandbox: Path, tmp_path: Path
) -> None:
    (sandbox / "runtime").mkdir()
    runtime = layout.make_runtime(sandbox / "runtime")
    logs = tmp_path / "logs"
    logs.mkdir()
    state_dir = sandbox / "state"  # the `state` volume, owned by the image's user
    state_dir.mkdir()
    layout.give_to(runtime, state_dir)
    static_root = sandbox / "static"
    ports = {name: free_port() for name in layout.CONTAINER_PORTS}
    web_url = f"http://127.0.0.1:{ports['web']}"
    # The operator's edits of .env: the REQUIRED variables, then the documented switch that
    # enables the local provider, and the agent API URL the local agents can reach (the public
    # name has no DNS here; its host is then allowed by derivation, not by editing ALLOWED_HOSTS).
    required = layout.required_variables()
    assert set(required) == {"SECRET_KEY", "FLOWER_BASIC_AUTH"}, required
    flower_auth = f"operator:{secrets.token_urlsafe(12)}"
    subs = layout.Substitutions(
        database_url=fresh_database,
        redis_url=os.environ["REDIS_URL"],
        ports=ports,
        state_dir=state_dir,
        static_root=static_root,
        operator={
            "SECRET_KEY": secrets.token_urlsafe(50),
            "FLOWER_BASIC_AUTH": flower_auth,
            "INVENTIV_REDIS_PREFIX": f"{settings.REDIS_PREFIX}compose:",
            "INVENTIV_LOCAL_PROVIDER": "true",
            "INVENTIV_AGENT_API_URL": web_url,
        },
    )
    roles: dict[str, Role] = {}
    envs = {name: layout.service_env(name, subs, runtime) for name in layout.APP_SERVICES}
    instance_ids: set[str] = set()
    try:
        # The image build's collectstatic step (as root, as `docker build` runs it).
        image = layout.dockerfile()
        build_env = {**envs["web"], **image.env}
        build_env.pop("DATABASE_URL")
        build_env.pop("REDIS_URL")
        build_env.pop("PROMETHEUS_MULTIPROC_DIR")  # the web role's tmpfs, not the build's
        build_env["STATIC_ROOT"] = str(static_root)
        for step in image.run:
            if "collectstatic" in step:
                subprocess.run(
                    ["/bin/sh", "-c", step],
                    cwd=layout.ROOT,
                    env=build_env,
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
        assert (static_root / "admin").is_dir()

        # migrate: a one-shot; every other role waits for it (service_completed_successfully).
        migrate = Role("migrate", layout.command("migrate", subs), envs["migrate"], runtime, logs)
        assert migrate.proc.wait(120) == 0, migrate.log()
        migrate_log = migrate.log()
        assert "inventiv.W002" in migrate_log  # check --deploy: plain HTTP is said out loud
        assert "local provider: created" in migrate_log

        for name in ("web", "gateway", "worker", "beat", "flower"):
            roles[name] = Role(name, layout.command(name, subs), envs[name], runtime, logs)
        deadline = time.monotonic() + 90
        healthy = {
            name: _wait_healthy(name, roles[name], envs[name], subs, runtime, deadline)
            for name in ("web", "gateway", "worker", "flower")
        }
        assert roles["beat"].alive(), roles["beat"].log()
        if runtime.uid is not None:  # as the image's user, like USER nobody
            for name, role in roles.items():
                status = Path(f"/proc/{role.proc.pid}/status").read_text()
                uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
                assert uids.split()[1:] == [str(runtime.uid)] * 4, (name, uids)
        print("healthy after (s):", {k: round(v, 1) for k, v in healthy.items()})

        # Host-header protection is kept for everything but the probes.
        assert httpx.get(f"{web_url}/healthz", headers={"Host": "evil.example"}).status_code == 200
        # (127.0.0.1 is the agent API URL's host here, so allowed: ask as "localhost".)
        refused = httpx.get(f"{web_url}/accounts/login/", headers={"Host": "localhost"})
        assert refused.status_code == 400
        # Flower: basic auth, from .env.
        flower = f"http://127.0.0.1:{ports['flower']}/flower/"
        assert httpx.get(flower).status_code == 401
        user, _, password = flower_auth.partition(":")
        assert httpx.get(flower, auth=(user, password), follow_redirects=True).status_code == 200

        # The first user signs up on the portal, over plain HTTP (INVENTIV_TLS=off): the
        # cookies are not Secure, so a browser (here httpx) sends them back. Sign-up is by
        # invitation (INVENTIV_SIGNUP=invite): the operator makes one, as docs/operations.md says.
        invite = subprocess.run(
            ["python", "manage.py", "invite", "--email", "operator@example.com"],
            cwd=layout.ROOT,
            env=envs["web"],
            capture_output=True,
            text=True,
            timeout=60,
            **runtime.popen_kwargs(),
        )
        assert invite.returncode == 0, invite.stderr
        invitation = invite.stdout.strip().split("/accounts/signup/", 1)[1]
        web = httpx.Client(base_url=web_url, headers={"Host": PUBLIC_HOST}, timeout=15)
        web.get(f"/accounts/signup/{invitation}").raise_for_status()
        signed_up = web.post(
            "/accounts/signup/",
            data={
                "email": "operator@example.com",
                "password1": "a long enough passphrase 9",
                "password2": "a long enough passphrase 9",
                "csrfmiddlewaretoken": web.cookies["csrftoken"],
            },
        )
        assert signed_up.status_code == 302, signed_up.text[:2000]
        csrf = {"X-CSRFToken": web.cookies["csrftoken"]}
        token = web.post("/api/v1/access-tokens/", json={"name": "ci"}, headers=csrf)
        assert token.status_code == 201, token.text
        api = httpx.Client(
            base_url=web_url,
            headers={"Host": PUBLIC_HOST, "Authorization": f"Bearer {token.json()['token']}"},
            timeout=15,
        )

        created = api.post(
            "/api/v1/model-codes/",
            json={
                "name": "prod-chat",
                "engine": "mock",
                "model_id": "inventiv/mock-chat-1b",
                "gpu_count": 0,
                "engine_args": {"default_max_tokens": 12},
            },
        )
        assert created.status_code == 201, created.text
        model_code_id = created.json()["id"]
        deployed = api.post(f"/api/v1/model-codes/{model_code_id}/deploy/", json={"replicas": 1})
        assert deployed.status_code == 202, deployed.text

        def ready() -> bool:
            listed = api.get("/api/v1/instances/", params={"model_code": model_code_id}).json()
            rows = listed["results"] if isinstance(listed, dict) else listed
            instance_ids.update(str(row["id"]) for row in rows)
            return any(row["status"] == "ready" for row in rows)

        wait_for(ready, timeout=90, interval=1, message="a ready instance on the local provider")
        records = state_dir / "local-provider"  # written by the worker as the image's user
        assert records.is_dir()
        if runtime.uid is not None:
            assert records.stat().st_uid == runtime.uid

        key = api.post("/api/v1/api-keys/", json={"name": "prod"})
        assert key.status_code == 201, key.text
        client = OpenAI(
            base_url=f"http://127.0.0.1:{ports['gateway']}/v1",
            api_key=key.json()["key"],
            max_retries=0,
            timeout=30,
        )

        def streamed() -> str:
            try:
                stream = client.chat.completions.create(
                    model="prod-chat",
                    stream=True,
                    messages=[{"role": "user", "content": "Hello from production"}],
                )
                return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            except APIStatusError as exc:  # the routing table may lag the ready event briefly
                if exc.status_code in (404, 503):
                    return ""
                raise

        answer = wait_for(streamed, timeout=30, interval=0.5, message="a streamed answer")
        assert answer.strip()

        # beat schedules the usage flush, the worker writes it: the request is billed.
        def billed() -> list[dict[str, Any]]:
            body = api.get("/api/v1/usage/").json()
            rows: list[dict[str, Any]] = body["results"] if isinstance(body, dict) else body
            return rows

        rows = wait_for(billed, timeout=30, interval=1, message="the usage record")
        assert rows[0]["completion_tokens"] > 0

        # The gateway stops gracefully within compose's stop grace period (lifespan shutdown).
        grace = float(str(layout.service("gateway")["stop_grace_period"]).removesuffix("s"))
        roles["gateway"].signal(signal.SIGTERM)
        assert roles["gateway"].proc.wait(grace) == 0, roles["gateway"].log()
    finally:
        for role in reversed(list(roles.values())):
            role.stop()
        _kill_tagged(instance_ids)
