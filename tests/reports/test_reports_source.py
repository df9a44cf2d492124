"""Resolving SWEEP and loading runs from a real SQLite MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.runtime.driver import write_trials_manifest
from orchestrator.spec.config import flat_params
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from reports.source import (
    ReportError,
    load_sweep,
    parse_axes,
    parse_trials_yaml,
    resolve_sweep,
)
from tests.orchestrator.specs import minimal_spec
from tests.reports.report_builders import Store


def test_resolve_directory_uses_default_store(store: Store) -> None:
    ref = resolve_sweep(str(store.root))
    assert ref.tracking_uri == f"sqlite:///{store.root.resolve() / 'mlflow.db'}"
    assert ref.parent_run_id == store.main.parent_run_id
    assert ref.experiment_id == store.main.experiment_id
    assert ref.output_dir == store.root.resolve()


def test_resolve_directory_with_tracking_uri_in_sweep_json(store: Store) -> None:
    ref = resolve_sweep(store.multi.directory)
    assert ref.tracking_uri == store.uri
    assert ref.parent_run_id == store.multi.parent_run_id
    # A path to the sweep.json file itself is accepted too.
    assert resolve_sweep(store.multi.directory / "sweep.json").parent_run_id == ref.parent_run_id


def test_resolve_moved_directory_falls_back_to_its_own_store(store: Store, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copyfile(store.root / "mlflow.db", moved / "mlflow.db")
    stale = f"sqlite:///{tmp_path / 'old-place' / 'mlflow.db'}"
    info = {"parent_run_id": store.main.parent_run_id, "tracking_uri": stale}
    (moved / "sweep.json").write_text(json.dumps(info), encoding="utf-8")
    ref = resolve_sweep(moved)
    assert ref.tracking_uri == f"sqlite:///{moved.resolve() / 'mlflow.db'}"
    assert ref.parent_run_id == store.main.parent_run_id


def test_resolve_run_id_and_experiment_names(store: Store) -> None:
    by_id = resolve_sweep(store.main.parent_run_id, tracking_uri=store.uri)
    assert by_id.parent_run_id == store.main.parent_run_id
    assert by_id.output_dir == store.root  # from the ukd.output_dir tag
    for name in ("main", "ukd/main"):
        ref = resolve_sweep(name, tracking_uri=store.uri)
        assert ref.parent_run_id == store.main.parent_run_id
        assert ref.experiment_id == store.main.experiment_id


def test_resolve_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="sweep directory not found"):
        resolve_sweep(str(tmp_path / "nope"))
    with pytest.raises(ReportError, match=r"no sweep\.json"):
        resolve_sweep(str(tmp_path))
    with pytest.raises(ReportError, match="unknown sweep"):
        resolve_sweep("0" * 32, tracking_uri=store.uri)
    with pytest.raises(ReportError, match="unknown sweep"):
        resolve_sweep("no-such-experiment", tracking_uri=store.uri)
    with pytest.raises(ReportError, match="not a sweep parent run"):
        resolve_sweep(store.main.run_ids[0], tracking_uri=store.uri)
    with pytest.raises(ReportError, match="no sweep parent run"):
        resolve_sweep("bare", tracking_uri=store.uri)
    with pytest.raises(ReportError, match="tracking store not found"):
        resolve_sweep("main", tracking_uri=f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "sweep.json").write_text(
        json.dumps({"parent_run_id": "f" * 32, "tracking_uri": store.uri}), encoding="utf-8"
    )
    with pytest.raises(ReportError, match="unknown run"):
        resolve_sweep(bad)
    (bad / "sweep.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ReportError, match="cannot read"):
        resolve_sweep(bad)


def test_report_error_is_value_error() -> None:
    assert issubclass(ReportError, ValueError)


def test_load_sweep_frame(store: Store) -> None:
    data = load_sweep(resolve_sweep(store.root))
    runs = data.runs
    assert len(runs) == len(store.main.run_ids) == 18
    assert sorted(runs["status"].value_counts().items()) == [
        ("FAILED", 2),
        ("FINISHED", 15),
        ("KILLED", 1),
    ]
    assert data.axes == ["student", "loss.name", "loss.lambda", "seed"]
    assert data.name == "main"
    assert data.sweep_id == "sweep-main"
    assert data.spec_text is not None and "<script>" in data.spec_text
    assert data.expected_trials is not None and len(data.expected_trials) == 19
    for column in ("params.loss.lambda", "params.teacher.arch", "tags.ukd.trial_id"):
        assert column in runs.columns
    # Final metric = value at the last step, not the early one.
    first = runs[runs["run_id"] == store.main.run_ids[0]].iloc[0]
    assert first["metrics.knn/top1_k10"] == 60.0
    assert first["teacher"] == "dino_r50" and first["objective"] == "coss"
    assert first["seed"] == "0"
    failed = runs[runs["failure_reason"].notna()]
    assert set(failed["failure_reason"]) == {"CUDA out of memory", "NaN loss"}


def test_load_sweep_paginates(store: Store) -> None:
    ref = resolve_sweep(store.root)
    paged = load_sweep(ref, page_size=4).runs
    whole = load_sweep(ref).runs
    assert len(paged) == len(whole) == 18
    assert sorted(paged["run_id"]) == sorted(whole["run_id"])


def test_load_sweep_without_artifacts(store: Store) -> None:
    data = load_sweep(resolve_sweep(store.noyaml.directory))
    assert data.spec_text is None and data.trials_text is None and data.expected_trials is None


def test_parse_axes() -> None:
    assert parse_axes('["a", "loss.lambda"]') == ["a", "loss.lambda"]
    assert parse_axes(None) is None
    assert parse_axes("not json") is None
    assert parse_axes('{"a": 1}') is None


def test_trials_yaml_from_the_real_writer_reads_back_as_flat_params(tmp_path: Path) -> None:
    """The driver writes trials.yaml; the report reads the same keys the runs' params have."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(minimal_spec(output_dir=str(tmp_path / "out"))))
    trials = expand(load_spec(spec))
    write_trials_manifest(tmp_path / "trials.yaml", trials)
    parsed = parse_trials_yaml((tmp_path / "trials.yaml").read_text())
    assert parsed == [flat_params(t) for t in trials]
    assert {(p["teacher"], p["student"], p["loss.name"], p["seed"]) for p in parsed} == {
        (t.teacher.label, t.student.arch, t.loss.name, str(t.train.seed)) for t in trials}


def test_parse_trials_yaml_rejects_other_shapes() -> None:
    assert parse_trials_yaml("just text") is None
    assert parse_trials_yaml("- 1\n- 2\n") is None
    assert parse_trials_yaml(": : :\n  - [") is None
