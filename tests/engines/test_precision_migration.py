"""The migration that splits the old mixed ``dtype`` into precision and quantization."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from apps.accounts.models import Organization

BEFORE = [("llm_models", "0003_scaling_policy")]
AFTER = [("llm_models", "0004_precision_quantization")]


@pytest.mark.django_db(transaction=True)
def test_it_moves_weight_widths_to_quantization_and_keeps_precisions() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        _check_the_migration(executor)
    finally:  # whatever happens, leave the schema as every other test expects it
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def _check_the_migration(executor: MigrationExecutor) -> None:
    apps = executor.loader.project_state(BEFORE).apps
    LlmModel = apps.get_model("llm_models", "LlmModel")
    # Only llm_models went back: other apps' tables are at their latest state.
    org = Organization.objects.create(name="Migr", slug="migr")
    rows: dict[str, dict[str, Any]] = {
        "a": {"dtype": "fp8", "model_id": "meta-llama/Llama-3.1-8B"},
        "b": {"dtype": "int4", "model_id": "hugging-quants/Llama-3.1-8B-AWQ-INT4"},
        "c": {"dtype": "int4", "model_id": "TheBloke/Llama-2-7B-GPTQ"},
        "d": {"dtype": "int4", "model_id": "meta-llama/Llama-3.1-8B"},
        "e": {"dtype": "int8", "model_id": "neuralmagic/Llama-3.1-8B-W8A8"},
        "f": {"dtype": "bfloat16", "model_id": "m"},
        "g": {
            "dtype": "auto",
            "model_id": "m",
            "engine_args": {"dtype": "half", "quantization": "awq", "max_num_seqs": 8},
        },
    }
    for name, fields in rows.items():
        LlmModel.objects.create(organization_id=org.id, name=name, **fields)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    apps = executor.loader.project_state(AFTER).apps
    after = {
        m.name: (m.dtype, m.quantization, m.engine_args)
        for m in apps.get_model("llm_models", "LlmModel").objects.all()
    }
    assert after == {
        "a": ("auto", "fp8", {}),
        "b": ("auto", "awq", {}),
        "c": ("auto", "gptq", {}),
        "d": ("auto", "bitsandbytes", {}),
        "e": ("auto", "compressed-tensors", {}),
        "f": ("bfloat16", "", {}),
        "g": ("float16", "awq", {"max_num_seqs": 8}),
    }
