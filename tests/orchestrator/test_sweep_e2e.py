"""A real sweep end to end: YAML -> Ray Tune -> trials -> MLflow (SQLite) -> report."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.runtime.driver import graph_sizes
from orchestrator.spec.config import TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages.teachers import cached_stage, ensure_teacher
from tests.orchestrator.sweeps import UKD, Session, wait_for
from tests.reports.browser_support import CHROMIUM_FLAGS, chromium_or_skip, find_chromium


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
    """The real `ukd sweep` in a subprocess: its console (stdout and stderr, in order) is
    what a user sees."""
    tmp = tmp_path_factory.mktemp("e2e")
    spec_path = tiny_sweep(tmp, tmp / "cache")
    result = subprocess.run([UKD, "sweep", str(spec_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=2400,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout
    return {"spec": spec_path, "out": tmp / "out", "output": result.stdout}


def test_quiet_start(finished_sweep: dict[str, Any]) -> None:
    """Nothing before ukd's own first line: MLflow's database lines go to the sweep's log
    file, and the local Ray ukd starts says nothing about token authentication."""
    output = finished_sweep["output"]
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[0] == "stage: 1 teacher(s) (tiny_simclr)", output
    assert "MLflow database tables" not in output and "INFO" not in output
    assert "Token authentication" not in output and "RAY_AUTH_MODE" not in output, output
    log = (finished_sweep["out"] / "sweep.log").read_text()
    assert "Creating initial MLflow database tables" in log


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


def test_a_cached_stage_is_read_without_running_it(finished_sweep: dict[str, Any]) -> None:
    """What the driver reads from the cache (no Ray task) is what the stage returns; a stage
    with something left to build (a neighbour graph not made yet) is not read."""
    trials = expand(load_spec(finished_sweep["spec"]))
    t = trials[0]
    sizes = tuple(sorted(graph_sizes(trials)[t.teacher.key]))
    assert sizes  # CoSS's neighbour graph
    cached = cached_stage(t.teacher, t.eval.knn, t.runtime.cache_dir, sizes)
    assert cached is not None
    assert cached == ensure_teacher(t.teacher, t.dataset, t.eval.knn, t.runtime.cache_dir,
                                    "cpu", sizes, 1)
    assert cached_stage(t.teacher, t.eval.knn, t.runtime.cache_dir, (*sizes, 7)) is None


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


@pytest.mark.browser
def test_mlflow_ui_lands_on_the_runs(finished_sweep: dict[str, Any], tmp_path: Path) -> None:
    """The address the sweep prints opens the runs view of a real `mlflow server` (on a
    port of its own choosing, read back from its log) in headless Chromium: Model-training
    mode, the sweep's runs listed, not the GenAI overview MLflow 3.17 opens by default."""
    chromium = chromium_or_skip(find_chromium())
    printed = re.search(r"Runs in the UI: http://127\.0\.0\.1:5000/(\S+)", finished_sweep["output"])
    assert printed is not None, finished_sweep["output"]
    manifest = json.loads((finished_sweep["out"] / "sweep.json").read_text())
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         manifest["tracking_uri"], "--host", "127.0.0.1", "--port", "0", "--workers", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        listening = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
        wait_for(lambda: listening.search(log.read_text()) is not None, 300,
                 "mlflow server listening", server, log)
        found = listening.search(log.read_text())
        assert found is not None
        url = f"http://127.0.0.1:{found.group(1)}/{printed.group(1)}"
        profile = tmp_path / "profile"
        profile.mkdir()
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               "--virtual-time-budget=30000", "--dump-dom", url],
                              capture_output=True, text=True, timeout=300, check=False)
    finally:
        Session(server.pid).stop(grace=30)
        server.wait(timeout=60)
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    runs = MlflowClient(manifest["tracking_uri"]).search_runs([manifest["experiment_id"]])
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(
        r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)))
    assert f"Runs - Experiment {manifest['experiment_id']} - MLflow" in text, text[:3000]
    assert f"{len(runs)} matching runs" in text, text[:3000]
    # the sweep's parent run by its name, a link to the run; its trials are its children
    parent = manifest["parent_run_id"]
    assert re.search(rf'/runs/{parent}"><span[^>]*>{manifest["name"]}</span>', dom), dom[-3000:]
    assert "Model registry" in text  # the Model-training side bar
    assert "Token Usage" not in text and "Traces 0" not in text  # not the GenAI overview
