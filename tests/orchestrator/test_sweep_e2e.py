"""A real sweep end to end: YAML -> Ray Tune -> trials -> MLflow (SQLite) -> report."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.spec.config import TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages.teachers import ensure_teacher


def tiny_sweep(tmp: Path, cache: Path) -> Path:
    spec = {
        "name": "e2e",
        "output_dir": str(tmp / "out"),
        "cache_dir": str(cache),
        "dataset": {"name": "digits", "labels": False},
        "teachers": {"tiny_simclr": {"arch": "resnet20", "source": "pretrain",
                                     "pretrain": {"recipe": "simclr", "epochs": 1,
                                                  "batch_size": 256}}},
        "grid": {"teacher": "tiny_simclr", "student": "resnet20",
                 "loss": [{"name": "coss", "lambda": 1.0, "neighbours": 3,
                           "epoch_anchors": 0.25},
                          {"name": "cos", "neighbours": 0}],
                 "seed": [0]},
        "train": {"epochs": 2, "batch_size": 128, "augment": "ssl_light"},
        "knn": {"k": [10, 20]},
        "resources": {"cpu": 1, "max_concurrent": 2},
    }
    path = tmp / "e2e.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("e2e")
    spec_path = tiny_sweep(tmp, tmp / "cache")
    result = CliRunner().invoke(app, ["sweep", str(spec_path)])
    assert result.exit_code == 0, result.output
    return {"spec": spec_path, "out": tmp / "out", "output": result.output}


def test_every_trial_is_a_finished_child_run(finished_sweep: dict[str, Any]) -> None:
    out = finished_sweep["out"]
    manifest = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=manifest["tracking_uri"])
    assert manifest["tracking_uri"] == f"sqlite:///{out / 'mlflow.db'}"
    parent = client.get_run(manifest["parent_run_id"])
    assert parent.data.tags["ukd.kind"] == "sweep" and parent.info.status == "FINISHED"
    # coss and cos differ in neighbours, but no objective sweeps it: only the objective varies
    assert json.loads(parent.data.tags["ukd.axes"]) == ["loss.name"]
    children = client.search_runs([manifest["experiment_id"]],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                  "and tags.`ukd.kind` = 'trial'")
    trials = expand(load_spec(finished_sweep["spec"]))
    assert sorted(r.data.tags["ukd.trial_id"] for r in children) == \
        sorted(t.trial_id for t in trials)
    for run in children:
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["student"] == "resnet20" and params["teacher"] == "tiny_simclr"
        assert params["loss.name"] in ("coss", "cos") and "loss.scale" in params
        metrics = run.data.metrics
        assert metrics["knn/top1_k10"] > 30.0  # 10 classes: chance is 10 %
        assert {"knn/top5_k20", "teacher_knn/top1_k10", "train_time_s"} <= set(metrics)
        history = client.get_metric_history(run.info.run_id, "loss/total")
        assert sorted(m.step for m in history) == [1, 2]
        if params["loss.name"] == "coss":
            assert len(client.get_metric_history(run.info.run_id, "loss/ss")) == 2
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "student.pt"} <= artifacts


def test_teacher_was_pretrained_once_and_logged(finished_sweep: dict[str, Any]) -> None:
    out = finished_sweep["out"]
    manifest = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=manifest["tracking_uri"])
    teachers = client.search_runs([manifest["experiment_id"]], "tags.`ukd.kind` = 'teacher'")
    assert len(teachers) == 1
    assert teachers[0].data.metrics["knn/top1_k10"] > 30.0
    assert "pretrain/loss" in teachers[0].data.metrics


def test_rerun_skips_finished_trials(finished_sweep: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["sweep", str(finished_sweep["spec"])])
    assert result.exit_code == 0, result.output
    assert "0 finished now, 2 already finished" in result.output


def test_report_reads_the_runs(finished_sweep: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["report", str(finished_sweep["out"])])
    assert result.exit_code == 0, result.output
    table = (finished_sweep["out"] / "report" / "comparison.md").read_text()
    assert "tiny_simclr -> resnet20" in table and "coss" in table


def test_dry_run_prints_stage_and_trials(finished_sweep: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", str(finished_sweep["spec"]), "--dry-run",
                                      "--output", str(tmp_path / "dry")])
    assert result.exit_code == 0, result.output
    assert "pretrain simclr" in result.output and "2 trials" in result.output
    assert not (tmp_path / "dry").exists()


def _stage_in_subprocess(args: tuple[dict[str, Any], str], queue: Any) -> None:
    trial = TrialConfig.from_dict(args[0])
    report = ensure_teacher(trial.teacher, trial.dataset, trial.eval.knn, args[1], "cpu", (), 1)
    queue.put(report.trained_now)


def test_concurrent_stages_train_a_teacher_once(tmp_path: Path) -> None:
    """Two processes asking for the same teacher at the same moment: one trains, one waits."""
    spec_path = tiny_sweep(tmp_path, tmp_path / "cache")
    trial = expand(load_spec(spec_path))[0].to_dict()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_stage_in_subprocess, args=((trial, str(tmp_path / "cache")),
                                                            queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    assert sorted(queue.get(timeout=5) for _ in procs) == [False, True]
