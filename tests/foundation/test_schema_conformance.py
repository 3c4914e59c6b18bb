"""The OpenAPI schema at /api/schema/ is true: schemathesis, run against the real web process
as a signed-in persona, finds no server error and no answer the schema does not describe
(status code, content type, body shape)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from apps.accounts.models import Organization, PersonalAccessToken, User
from apps.accounts.services import user_create
from apps.billing.models import Budget
from apps.gateway.models import ApiKey
from apps.gateway.services import api_key_create
from apps.models.models import LlmModel
from apps.models.services import model_create
from tests.processes import PYTHON, ROOT, ProcessGroup

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]
# The name of the persona's own tokens (schemathesis_persona.py; not imported: it sets Django
# up and registers a global schemathesis auth provider, for the CLI's process only).
PERSONA_TOKEN = "schemathesis persona"
# Bounded: a fixed seed, few examples per operation and a time budget for the whole run.
MAX_TIME_S = 60
MAX_EXAMPLES = 12


@pytest.mark.slow
def test_the_api_answers_only_what_its_schema_documents(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    # Given an operator with a model code and an API key, and the real web process
    persona: User = user_create(
        email="schema@example.com", password="correct-horse-9", is_staff=True
    )
    org = Organization.objects.get(memberships__user=persona, personal=True)
    model_create(organization=org, name="bot", engine="mock", model_id="m", gpu_count=0)
    api_key_create(organization=org, created_by=persona, name="k", model_codes=[])
    _, url = processes.web()
    assert httpx.get(url + "/api/schema/", timeout=10).status_code == 200

    # When schemathesis explores every operation of the schema
    args = [
        *(PYTHON, "-m", "schemathesis.cli", "run", f"{url}/api/schema/"),
        *("--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing"),
        *("--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME_S)),
        *("--workers", "2", "--seed", "15", "--no-color"),
    ]
    run = subprocess.run(
        args,
        cwd=tmp_path,  # schemathesis' and hypothesis' caches stay out of the repository
        env={
            **processes.env,
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.foundation.schemathesis_persona",
            "INVENTIV_SCHEMA_PERSONA": persona.email,
        },
        capture_output=True,
        text=True,
        timeout=MAX_TIME_S + 120,
    )

    # Then nothing disagrees with the schema
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.log").write_text(output)
    failures = output[output.find("FAILURES") :] if "FAILURES" in output else output
    assert run.returncode == 0, failures[:20000]
    # ...and the run was signed in (not 401 throughout): some of its own writes went through
    # (which ones depends on how far the time-bounded run got: a loaded machine gets less far).
    writes = {
        "access tokens": PersonalAccessToken.objects.filter(user=persona)
        .exclude(name=PERSONA_TOKEN)
        .count(),
        "model codes": LlmModel.objects.filter(organization=org).exclude(name="bot").count(),
        "API keys": ApiKey.objects.filter(organization=org).exclude(name="k").count(),
        "budgets": Budget.objects.filter(organization=org).count(),
    }
    assert any(writes.values()), (writes, output[-4000:])
