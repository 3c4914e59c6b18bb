"""``model_id`` becomes a positional argument of ``vllm serve``: it must never read as a flag.

Defence in depth: the control plane refuses it on create and update, and the agent refuses it
again before building argv (a spec from an older or compromised control plane)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from agent.engine_args import validate_model_id
from agent.engines import build_command
from agent.protocol import EngineSpec
from apps.models.models import LlmModel

SMUGGLERS = [
    "--allowed-local-media-path=/",
    "-h",
    "--trust-remote-code",
    "org/model --trust-remote-code",
    "org/model\n--x",
    "org/model\n",
    "org/../etc",
    "../etc/passwd",
    "/etc/../root",
    "/models/ok/../../x",
    "org/name/extra",
    "org/-name",
    "org--x/name",
    "a b",
    "org/$(id)",
    "org/model;rm",
    "",
    "x" * 97,
]
GOOD = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "gpt2",
    "org/model_v1.2",
    "/models/llama-3.1-8b",
    "/srv/models/org/name",
]


@pytest.mark.parametrize("model_id", GOOD)
def test_it_accepts_hugging_face_repo_ids_and_safe_local_paths(model_id: str) -> None:
    assert validate_model_id(model_id) == model_id


@pytest.mark.parametrize("model_id", SMUGGLERS)
def test_the_agent_refuses_a_model_id_that_could_smuggle_flags(model_id: str) -> None:
    spec = EngineSpec(
        engine="vllm",
        model_id=model_id,
        served_model_name="m",
        engine_args={},
        api_key="k",
        host="127.0.0.1",
        port=8001,
    )
    with pytest.raises(ValueError, match=r"^model_id: "):
        build_command(spec, base_env={})
    with pytest.raises(ValueError, match=r"^model_id: "):
        build_command(spec.model_copy(update={"engine": "mock"}), base_env={})


VALID = {"name": "sales-bot", "engine": "mock", "model_id": "org/model", "gpu_count": 0}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model_id", ["--allowed-local-media-path=/", "-x", "org/model --trust-remote-code", "a/b/c"]
)
def test_the_api_refuses_such_a_model_id_on_create(api: APIClient, model_id: str) -> None:
    response = api.post("/api/v1/model-codes/", {**VALID, "model_id": model_id}, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["param"] == "model_id"
    assert LlmModel.objects.count() == 0


@pytest.mark.django_db
def test_the_api_refuses_such_a_model_id_on_update(api: APIClient) -> None:
    created: dict[str, Any] = api.post("/api/v1/model-codes/", VALID, format="json").json()
    response = api.patch(
        f"/api/v1/model-codes/{created['id']}/",
        {"model_id": "--allowed-local-media-path=/"},
        format="json",
    )
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["param"] == "model_id"
    assert LlmModel.objects.get(id=created["id"]).model_id == "org/model"
