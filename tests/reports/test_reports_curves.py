"""Learning curves from per-epoch metric histories (MlflowClient.get_metric_history)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from mlflow.entities import Metric

from reports.curves import BAND, CurvePlan, build_curves, plan_curves, write_curves
from reports.records import RowKey
from reports.source import (
    SweepData,
    SweepRef,
    load_metric_histories,
    load_sweep,
    resolve_sweep,
)
from reports.tables import build_comparison
from tests.reports.picture_builders import (
    EPOCHS,
    EVAL_EVERY,
    R18,
    TEACHER,
    WRN,
    PictureStore,
    knn_at,
    loss_at,
    picture_store,
    picture_trials,
)
from tests.reports.report_builders import new_store

PAIR_R18 = RowKey(TEACHER, R18)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> PictureStore:
    return picture_store(tmp_path_factory)


@pytest.fixture(scope="module")
def data(pictures: PictureStore) -> SweepData:
    return load_sweep(resolve_sweep(pictures.pictures.directory))


@pytest.fixture(scope="module")
def plan(data: SweepData) -> CurvePlan:
    return plan_curves(data, build_comparison(data))


def test_plan_reads_only_finished_runs_and_drawn_metrics(
    pictures: PictureStore, plan: CurvePlan
) -> None:
    trials = picture_trials()
    finished = {
        run_id
        for run_id, trial in zip(pictures.pictures.run_ids, trials, strict=True)
        if trial.status == "FINISHED"
    }
    assert set(plan.wanted) == finished  # the FAILED run is not read
    assert plan.loss_metrics == ["loss/total", "loss/cos", "loss/sim"]
    # knn/top1_k10 is the report's metric; linear/top1 has no _best sibling: not read.
    assert plan.eval_metrics == ["knn/top1_k10"]
    for run_id, trial in zip(pictures.pictures.run_ids, trials, strict=True):
        if run_id in finished:
            terms = ["loss/total", "loss/cos"] + (["loss/sim"] if trial.objective == "coss" else [])
            assert plan.wanted[run_id] == [*terms, "knn/top1_k10"]
    assert "lr" not in {m for metrics in plan.wanted.values() for m in metrics}


def test_histories_per_epoch(pictures: PictureStore, plan: CurvePlan) -> None:
    histories = load_metric_histories(resolve_sweep(pictures.pictures.directory), plan.wanted)
    run_id, trial = pictures.pictures.run_ids[0], picture_trials()[0]
    expected: list[tuple[int, object]] = [
        (epoch, pytest.approx(loss_at(trial, "loss/total", epoch))) for epoch in range(1, 7)
    ]
    assert histories[run_id]["loss/total"] == expected
    assert [step for step, _ in histories[run_id]["knn/top1_k10"]] == [2, 4, 6]


def test_curves_mean_and_min_max_band(pictures: PictureStore, plan: CurvePlan) -> None:
    histories = load_metric_histories(resolve_sweep(pictures.pictures.directory), plan.wanted)
    curves = {pair.row: pair for pair in build_curves(plan, histories)}
    assert list(curves) == [PAIR_R18, RowKey(TEACHER, WRN)]
    pair = curves[PAIR_R18]
    assert pair.labels == ["cos", "coss (lambda=0.5)", "coss (lambda=1)"]
    panels = {panel.metric: panel for panel in pair.panels}
    assert list(panels) == ["loss/total", "loss/cos", "loss/sim", "knn/top1_k10"]
    # cos has no loss/sim term.
    assert [s.label for s in panels["loss/sim"].series] == ["coss (lambda=0.5)", "coss (lambda=1)"]

    coss = [t for t in picture_trials() if t.student == R18 and t.lam == 0.5]
    total = next(s for s in panels["loss/total"].series if s.label == "coss (lambda=0.5)")
    assert total.steps == tuple(range(1, EPOCHS + 1)) and total.runs == 2
    for index, epoch in enumerate(total.steps):
        values = [loss_at(t, "loss/total", epoch) for t in coss]
        assert total.mean[index] == pytest.approx(statistics.fmean(values))
        assert total.low[index] == pytest.approx(min(values))
        assert total.high[index] == pytest.approx(max(values))
    knn = next(s for s in panels["knn/top1_k10"].series if s.label == "coss (lambda=0.5)")
    assert knn.steps == tuple(range(EVAL_EVERY, EPOCHS + 1, EVAL_EVERY))
    assert knn.mean == pytest.approx(
        [statistics.fmean(knn_at(t, e) for t in coss) for e in knn.steps]
    )
    # The FAILED seed of coss (lambda=1) is not averaged in.
    one = next(s for s in panels["loss/total"].series if s.label == "coss (lambda=1)")
    assert one.runs == 1 and one.low == one.high


def test_metric_logged_once_is_no_curve(pictures: PictureStore, data: SweepData) -> None:
    plan = plan_curves(data, build_comparison(data, "linear/top1"))
    assert plan.eval_metrics == ["linear/top1", "knn/top1_k10"]  # knn has knn/top1_k10_best
    histories = load_metric_histories(resolve_sweep(pictures.pictures.directory), plan.wanted)
    for pair in build_curves(plan, histories):
        metrics = [panel.metric for panel in pair.panels]
        assert "linear/top1" not in metrics  # one step only
        assert "knn/top1_k10" in metrics


def test_png_and_svg_written(pictures: PictureStore, plan: CurvePlan, tmp_path: Path) -> None:
    histories = load_metric_histories(resolve_sweep(pictures.pictures.directory), plan.wanted)
    written = write_curves(build_curves(plan, histories), plan, tmp_path)
    assert [p.stem for p in written] == ["curves_dino_r50__resnet18", "curves_dino_r50__wrn_16_2"]
    for picture in written:
        assert picture.png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert "<svg" in picture.svg.read_text(encoding="utf-8")
        assert BAND in picture.caption and "knn/top1_k10" in picture.caption
    assert "loss/sim" in written[0].svg.read_text(encoding="utf-8")


def test_repeated_step_keeps_latest_and_nan_is_dropped(tmp_path: Path) -> None:
    uri, client = new_store(tmp_path)
    experiment = client.create_experiment("h", artifact_location=(tmp_path / "a").as_uri())
    run_ids = []
    for index in range(100):
        run_id = client.create_run(experiment).info.run_id
        run_ids.append(run_id)
        metrics = [
            Metric(term, float(epoch), 1000 + epoch, epoch)
            for term in ("loss/total", "loss/a", "loss/b")
            for epoch in range(1, 31)
        ]
        metrics += [Metric("knn/top1_k10", 10.0 * step, 2000 + step, step) for step in (5, 10)]
        if index == 0:  # a resumed trial logged epoch 10 again, later
            metrics.append(Metric("knn/top1_k10", 77.0, 9000, 10))
            metrics.append(Metric("loss/a", float("nan"), 9000, 31))
        client.log_batch(run_id, metrics=metrics)
    ref = SweepRef(uri, experiment, run_ids[0])
    wanted = {run_id: ["loss/total", "loss/a", "loss/b", "knn/top1_k10"] for run_id in run_ids}
    histories = load_metric_histories(ref, wanted)
    assert histories[run_ids[0]]["knn/top1_k10"] == [(5, 50.0), (10, 77.0)]
    assert histories[run_ids[0]]["loss/a"][-1] == (30, 30.0)  # the NaN is dropped
    assert histories[run_ids[1]]["knn/top1_k10"] == [(5, 50.0), (10, 100.0)]
    assert load_metric_histories(ref, {run_ids[0]: ["never/logged"]}) == {
        run_ids[0]: {"never/logged": []}
    }
