"""A real sweep with the linear probe, periodic evaluation and reference rows: YAML -> Ray
(teacher, references, trials) -> MLflow -> `ukd report` (reference columns, pictures, the
report folder as the parent run's artifacts, index.html in headless Chromium)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from common import names as N
from orchestrator.cli import app
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages.references import ensure_reference, plan_references
from tests.reports.browser_support import (
    chromium_or_skip,
    find_chromium,
    image_check_results,
    with_image_check,
)

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"


def _spec(tmp: Path, cache: Path) -> Path:
    spec = {
        "name": "refs",
        "output_dir": str(tmp / "out"),
        "cache_dir": str(cache),  # its own: the sweep trains (and logs) its teacher
        "dataset": {"name": "digits", "labels": False},
        "teachers": {"t": {"arch": "resnet20", "source": "pretrain",
                           "pretrain": {"recipe": "simclr", "epochs": 1, "batch_size": 256}}},
        "grid": {"teacher": "t", "student": "resnet20", "loss": "cos", "seed": [0, 1]},
        "train": {"epochs": 2, "batch_size": 256, "augment": "ssl_light"},
        "eval": {"every": 1, "knn": {"k": [10]}, "linear": {"epochs": 5}},
        "references": {"random_init": True, "ssl_only": {"epochs": 1, "batch_size": 256}},
        "resources": {"cpu": 1, "max_concurrent": 2, "threads": 1, "stage_cpu": 1},
    }
    path = tmp / "refs.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("refs-e2e")
    cache = tmp / "cache"
    path = _spec(tmp, cache)
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 0, result.output
    out = tmp / "out"
    manifest = json.loads((out / N.SWEEP_JSON).read_text())
    client = MlflowClient(tracking_uri=manifest["tracking_uri"])
    return {"spec": path, "out": out, "cache": cache, "output": result.output,
            "manifest": manifest, "client": client}


def _runs(sweep: dict[str, Any], kind: str) -> list[Any]:
    client: MlflowClient = sweep["client"]
    return list(client.search_runs([sweep["manifest"]["experiment_id"]],
                                   f"tags.`{N.TAG_KIND}` = '{kind}'"))


def test_reference_runs_are_logged(sweep: dict[str, Any]) -> None:
    refs = _runs(sweep, N.KIND_REFERENCE)
    assert sorted((r.data.tags[N.TAG_REFERENCE], r.data.params["seed"]) for r in refs) == [
        ("random_init", "0"), ("random_init", "1"), ("ssl_only", "0"), ("ssl_only", "1")]
    parent = sweep["manifest"]["parent_run_id"]
    for run in refs:
        assert run.info.status == "FINISHED"
        assert run.data.tags[N.TAG_PARENT] == parent
        assert run.data.tags[N.TAG_STUDENT] == "resnet20"
        assert {"knn/top1_k10", "linear/top1", "linear/top5"} <= set(run.data.metrics)
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["digits"]
    ssl = next(r for r in refs if r.data.tags[N.TAG_REFERENCE] == "ssl_only")
    assert ssl.data.params["recipe.recipe"] == "simclr" and "pretrain/loss" in ssl.data.metrics
    assert "references: 4 run(s) (random_init, ssl_only; 0 already logged)" in sweep["output"]


def test_trials_log_the_linear_probe_and_the_teachers(sweep: dict[str, Any]) -> None:
    client: MlflowClient = sweep["client"]
    trials = _runs(sweep, N.KIND_TRIAL)
    assert len(trials) == 2
    for run in trials:
        metrics = run.data.metrics
        assert {"linear/top1", "linear/top5", "linear/top1_best", "linear/top1_best_epoch",
                "knn/top1_k10_best", "teacher_linear/top1", "teacher_knn/top1_k10"} <= set(metrics)
        assert run.data.params["linear.epochs"] == "5"
        # The teacher's probe runs beside the trials: logged once, at step 0, whether it
        # ended before the trial's run began or after.
        assert [m.step for m in client.get_metric_history(
            run.info.run_id, "teacher_linear/top1")] == [0]
        history = client.get_metric_history(run.info.run_id, "linear/top1")
        assert sorted(m.step for m in history) == [1, 2]  # every epoch, step = epoch
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["digits"]
    teacher = _runs(sweep, N.KIND_TEACHER)[0]
    assert [d.dataset.name for d in teacher.inputs.dataset_inputs] == ["digits"]


def test_experiment_kind_and_parent_summary(sweep: dict[str, Any]) -> None:
    client: MlflowClient = sweep["client"]
    experiment = client.get_experiment(sweep["manifest"]["experiment_id"])
    assert experiment.tags[N.TAG_EXPERIMENT_KIND] == "custom_model_development"
    parent = client.get_run(sweep["manifest"]["parent_run_id"])
    metrics = parent.data.metrics
    assert metrics["trials/finished"] == 2.0 and metrics["trials/failed"] == 0.0
    finals = [r.data.metrics["knn/top1_k10"] for r in _runs(sweep, N.KIND_TRIAL)]
    assert metrics["best/knn/top1_k10"] == max(finals)
    assert "best/linear/top1" in metrics


def test_reference_stages_are_cached_and_reused(sweep: dict[str, Any]) -> None:
    spec = load_spec(sweep["spec"])
    planned = plan_references(spec.references, expand(spec))
    reports = [ensure_reference(r, sweep["cache"], "cpu", 1) for r in planned]
    assert not any(r.trained_now for r in reports)
    logged = {(r.data.tags[N.TAG_REFERENCE], r.data.params["seed"]):
              r.data.metrics for r in _runs(sweep, N.KIND_REFERENCE)}
    for ref, report in zip(planned, reports, strict=True):
        for key, value in report.metrics.items():
            assert logged[(ref.kind, str(ref.seed))][key] == value


def test_report_has_reference_columns_and_pictures(sweep: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["report", str(sweep["out"])])
    assert result.exit_code == 0, result.output
    report = sweep["out"] / "report"
    table = (report / "comparison.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| teacher"))
    assert header.startswith("| teacher -> student | teacher | random_init | ssl_only | cos |")
    assert "Cells: the final value (last epoch)." in table
    charts = sorted(report.glob("chart_*.png"))
    assert charts and charts[0].read_bytes().startswith(b"\x89PNG")
    client: MlflowClient = sweep["client"]
    parent = sweep["manifest"]["parent_run_id"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/index.html" in logged and "report/comparison.md" in logged

    linear = CliRunner().invoke(app, ["report", str(sweep["out"]), "--metric", "linear/top1",
                                      "--best", "--out", str(sweep["out"] / "report-linear")])
    assert linear.exit_code == 0, linear.output
    text = (sweep["out"] / "report-linear" / "comparison.md").read_text()
    assert "linear/top1 (%)" in text and "best epoch" in text and "random_init" in text


@pytest.mark.browser
def test_index_html_renders_with_every_image(sweep: dict[str, Any], tmp_path: Path) -> None:
    chromium = chromium_or_skip(find_chromium())
    index = sweep["out"] / "report" / "index.html"
    if not index.is_file():
        assert CliRunner().invoke(app, ["report", str(sweep["out"])]).exit_code == 0
    page = index.read_text(encoding="utf-8")
    checked = tmp_path / "index-check.html"
    checked.write_text(with_image_check(page), encoding="utf-8")
    profile = tmp_path / "profile"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    images = image_check_results(done.stdout)
    assert len(images) == page.count("<img ") >= 2  # comparison chart, learning curves
    for image in images:
        assert image["complete"] is True and isinstance(image["naturalWidth"], int)
        assert image["naturalWidth"] > 0, image


@pytest.mark.slow
def test_quickstart_report_has_the_random_init_reference(tmp_path: Path) -> None:
    """The quickstart itself (minutes): its report shows the random-init reference, the
    linear probe beside kNN, and the comparison PNG."""
    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["sweep", str(QUICKSTART), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert "random_init" in (out / "report" / "comparison.md").read_text()
    assert sorted((out / "report").glob("chart_*.png"))
    linear = CliRunner().invoke(app, ["report", str(out), "--metric", "linear/top1",
                                      "--out", str(tmp_path / "linear")])
    assert linear.exit_code == 0 and "random_init" in linear.output
