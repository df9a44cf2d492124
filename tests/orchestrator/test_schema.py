"""`ukd schema`: the JSON Schema of a sweep spec, the file editors read, and the experiments."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.spec.load import _safe_load

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict[str, object]:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(data)
    return data


def test_the_committed_schema_is_what_ukd_schema_prints(schema: dict[str, object]) -> None:
    committed = json.loads((ROOT / "docs" / "sweep.schema.json").read_text())
    assert committed == schema, "regenerate: ukd schema > docs/sweep.schema.json"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_every_experiment_validates_and_points_editors_at_the_schema(
        schema: dict[str, object], path: Path) -> None:
    text = path.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=../docs/sweep.schema.json"
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(_safe_load(text)))
    assert errors == [], [e.message for e in errors]


def test_the_schema_rejects_what_the_loader_rejects(schema: dict[str, object]) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    spec = _safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    for key, bad in (("grid", {**spec["grid"], "loss": [{"name": "coss", "lamda": 1}]}),
                     ("train", {**spec["train"], "epochs": 0}),
                     ("dataset", "mnist"), ("extra", 1)):
        assert not validator.is_valid({**spec, key: bad}), key
