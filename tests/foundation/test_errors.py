"""One error vocabulary: the registry, its documentation, and the same code for the same fault on
the REST API, the agent API and the gateway."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.test import Client
from rest_framework import exceptions
from rest_framework.test import APIClient

from apps.gateway.body import parse_body
from apps.gateway.errors import GatewayError
from inventiv.error_codes import CODES, envelope, markdown_table
from inventiv.errors import DRF_CODES, ApplicationError, Conflict, Forbidden, NotFound

ROOT = Path(__file__).resolve().parents[2]
ERROR_CLASSES = {"ApplicationError", "NotFound", "Conflict", "Forbidden"}


def _codes_written_in_the_code() -> dict[str, str]:
    """Every code string literal given to an error in apps/ and inventiv/, with where."""
    found: dict[str, str] = {}
    for path in [*ROOT.joinpath("apps").rglob("*.py"), *ROOT.joinpath("inventiv").rglob("*.py")]:
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(ROOT))

        def note(node: ast.AST | None, where: str = where) -> None:
            # Constants, and both arms of a conditional; not f-strings (engine pass-through
            # codes) nor the empty "no error yet".
            if isinstance(node, ast.IfExp):
                note(node.body)
                note(node.orelse)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
                found[node.value] = f"{where}:{node.lineno}"

        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in ERROR_CLASSES or name.endswith("AuthError"):
                    note(next((k.value for k in node.keywords if k.arg == "code"), None))
                elif name == "GatewayError" and node.args:
                    note(node.args[0])
                elif name == "Upstream" and len(node.args) > 1:
                    note(node.args[1])
            elif isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", "") in ERROR_CLASSES for b in node.bases
            ):
                for item in node.body:
                    if isinstance(item, ast.Assign) and any(
                        getattr(t, "id", "") == "code" for t in item.targets
                    ):
                        note(item.value)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = (
                        zip(target.elts, node.value.elts, strict=False)
                        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                        else [(target, node.value)]
                    )
                    for t, v in pairs:
                        if getattr(t, "attr", getattr(t, "id", "")) == "error_code":
                            note(v)
    return found


def test_it_registers_every_code_the_code_raises() -> None:
    written = _codes_written_in_the_code()

    unregistered = {code: where for code, where in written.items() if code not in CODES}

    assert "model_unavailable" in written and "invalid_agent_credentials" in written  # the scan
    assert unregistered == {}


def test_it_registers_no_code_nothing_raises() -> None:
    raised = {*_codes_written_in_the_code(), *DRF_CODES.values(), "server_error"}

    assert set(CODES) - raised == set()


def test_it_documents_exactly_the_registry() -> None:
    doc = ROOT.joinpath("docs/errors.md").read_text()
    listed = re.findall(r"^\| `([a-z_]+)` \|", doc, flags=re.MULTILINE)

    assert markdown_table() in doc, "paste inventiv.error_codes.markdown_table() into the doc"
    assert sorted(listed) == sorted(CODES)


def test_it_derives_status_and_type_from_the_code() -> None:
    cases = {
        "invalid_value": (400, "invalid_request_error"),
        "not_authenticated": (401, "authentication_error"),
        "permission_denied": (403, "permission_error"),
        "not_found": (404, "invalid_request_error"),
        "model_not_found": (404, "invalid_request_error"),
        "rate_limit_exceeded": (429, "rate_limit_error"),
        "model_unavailable": (503, "server_error"),
    }

    got = {code: (CODES[code].status, CODES[code].type) for code in cases}

    assert got == cases
    assert (NotFound("x").status_code, NotFound("x").type) == (404, "invalid_request_error")
    assert (Conflict("x").status_code, Forbidden("x").status_code) == (409, 403)
    assert ApplicationError("x", param="name").code == "invalid_value"
    assert GatewayError("model_unavailable", "x").status == 503


def test_it_refuses_an_unregistered_code_when_the_error_is_built() -> None:
    with pytest.raises(KeyError):
        ApplicationError("x", code="no_such_code")
    with pytest.raises(KeyError):
        GatewayError("no_such_code", "x")
    with pytest.raises(KeyError):

        class Wrong(ApplicationError):
            code = "no_such_code"


def test_it_renders_one_envelope_on_every_surface() -> None:
    rest = NotFound("No such thing.", param="thing").body()
    gateway = orjson.loads(GatewayError("not_found", "No such thing.", param="thing").body())

    assert rest == gateway == envelope("No such thing.", "not_found", "thing")
    assert rest == {
        "error": {
            "message": "No such thing.",
            "type": "invalid_request_error",
            "param": "thing",
            "code": "not_found",
        }
    }


def test_it_maps_each_drf_exception_to_a_code_of_the_same_status() -> None:
    drf = [
        cls
        for _, cls in inspect.getmembers(exceptions, inspect.isclass)
        if issubclass(cls, exceptions.APIException) and cls is not exceptions.APIException
    ]

    mapped = {cls.__name__: CODES[DRF_CODES[str(cls.default_code)]].status for cls in drf}

    assert mapped == {cls.__name__: cls.status_code for cls in drf}


# --- the same fault, the same code, on every surface --------------------------------------


def _gateway(body: bytes) -> dict[str, Any]:
    with pytest.raises(GatewayError) as refused:
        parse_body(body, "chat")
    error: dict[str, Any] = orjson.loads(refused.value.body())["error"]
    return error


def _agent(client: Client, body: bytes) -> dict[str, Any]:
    answer = client.post("/internal/agent/v1/register", body, content_type="application/json")
    assert answer.status_code == 400
    error: dict[str, Any] = answer.json()["error"]
    return error


def _rest(api: APIClient, body: bytes) -> dict[str, Any]:
    answer = api.post("/api/v1/model-codes/", body, content_type="application/json")
    assert answer.status_code == 400
    error: dict[str, Any] = answer.json()["error"]
    return error


@pytest.mark.django_db
def test_it_answers_a_missing_field_with_invalid_value_everywhere(
    api: APIClient, client: Client
) -> None:
    gateway = _gateway(b'{"model": "sales-bot"}')
    agent = _agent(client, b'{"agent_version": "1", "hostname": "gpu-1"}')
    rest = _rest(api, b'{"engine": "mock", "model_id": "org/model"}')

    assert [(e["code"], e["type"]) for e in (gateway, agent, rest)] == [
        ("invalid_value", "invalid_request_error")
    ] * 3
    assert [e["param"] for e in (gateway, agent, rest)] == ["messages", "bootstrap_token", "name"]


@pytest.mark.django_db
def test_it_answers_a_malformed_body_with_invalid_json_everywhere(
    api: APIClient, client: Client
) -> None:
    answers = [_gateway(b"{nope"), _agent(client, b"{nope"), _rest(api, b"{nope")]
    arrays = [_gateway(b"[1]"), _agent(client, b"[1]")]

    assert {(e["code"], e["param"]) for e in answers + arrays} == {("invalid_json", None)}


@pytest.mark.django_db
def test_it_answers_not_found_alike_on_rest_and_the_agent_api(
    api: APIClient, client: Client
) -> None:
    missing = api.get("/api/v1/model-codes/999999/").json()["error"]
    no_route = api.get("/api/v1/model-codes/not-a-number/").json()["error"]
    no_file = client.get("/internal/agent/v1/dist/other.whl").json()["error"]
    gateway = orjson.loads(GatewayError("not_found", "Unknown path /x.").body())["error"]

    kinds = {(e["code"], e["type"]) for e in (missing, no_route, no_file, gateway)}

    assert kinds == {("not_found", "invalid_request_error")}


@pytest.mark.django_db
def test_it_answers_a_rest_call_without_credentials_with_not_authenticated(
    client: Client,
) -> None:
    answer = client.get("/api/v1/model-codes/", HTTP_AUTHORIZATION="Bearer nope")
    anonymous = client.get("/api/v1/model-codes/")

    assert answer.status_code == anonymous.status_code == 401
    assert answer.json()["error"]["code"] == anonymous.json()["error"]["code"]
    assert answer.json()["error"]["code"] == "not_authenticated"
    assert answer.json()["error"]["type"] == "authentication_error"
