"""Failure isolation: trials that fail (non-finite loss from a huge learning rate; an exception
from a damaged checkpoint; a teacher whose pretraining diverges) are recorded as FAILED with
their reason, after the configured retries, while the other trial finishes; the sweep exits 1
naming them, and `ukd report` counts them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.orchestrator.sweeps import (
    Finished,
    Session,
    Store,
    shared_cache,
    start_ukd,
    tiny_spec,
    write_spec,
)


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("failures")
    spec = tiny_spec(tmp, shared_cache(tmp_path_factory), name="failures",
                     grid={"teacher": ["t", "diverges"], "lr": [0.05, 1.0e6, 1.0e7]},
                     resources={"cpu": 0.5, "max_concurrent": 3, "retries": 1})
    spec["teachers"]["diverges"] = {"arch": "resnet20", "source": "pretrain", "pretrain": {
        "recipe": "simclr", "epochs": 1, "batch_size": 256, "lr": 1.0e6}}
    path = write_spec(tmp / "failures.yaml", spec)
    trials = expand(load_spec(path))
    ours = [t for t in trials if t.teacher.label == "t"]
    good = next(t for t in ours if t.train.lr == 0.05)
    nan = next(t for t in ours if t.train.lr == 1.0e6)
    damaged = next(t for t in ours if t.train.lr == 1.0e7)
    # A checkpoint that does not load: that trial raises as soon as it starts (before its
    # learning rate could make the loss non-finite).
    trial_dir = Path(damaged.runtime.trial_dir)
    trial_dir.mkdir(parents=True)
    (trial_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    # Its own process (as users run it): Ray started in-process changes the test process's
    # state (e.g. token auth), which later tests attaching to a cluster must not inherit.
    log = tmp / "sweep.log"
    proc = start_ukd(["sweep", str(path)], log)
    session = Session(proc.pid)
    try:
        proc.wait(timeout=480)
        result = Finished(proc.returncode, log.read_text())
        yield {"result": result, "trials": trials, "good": good, "nan": nan,
               "damaged": damaged, "out": tmp / "out", "session": session}
    finally:
        if proc.poll() is None:
            proc.kill()  # the ukd process this test started
            proc.wait(timeout=30)
        session.kill_all()


def test_sweep_exits_1_and_names_the_failed_trials(failed_sweep: dict[str, Any]) -> None:
    result = failed_sweep["result"]
    assert result.returncode == 1, result.output
    assert "6 trials: 1 finished now, 0 already finished, 5 failed" in result.output
    for t in failed_sweep["trials"]:
        if t.trial_id != failed_sweep["good"].trial_id:
            assert f"failed {t.trial_id} [" in result.output
    assert "lr=1000000.0]: non-finite loss" in result.output
    assert "unreadable checkpoint" in result.output
    assert "teacher stage failed: RuntimeError: simclr pretraining diverged" in result.output


def test_failures_are_recorded_and_the_rest_finish(failed_sweep: dict[str, Any]) -> None:
    store = Store.of(failed_sweep["out"])
    runs = {r.data.tags["ukd.trial_id"]: r for r in store.runs()}
    assert len(runs) == 6
    assert store.parent().info.status == "FAILED"
    good = runs[failed_sweep["good"].trial_id]
    assert good.info.status == "FINISHED" and "ukd.failure_reason" not in good.data.tags
    assert store.steps(good, "loss/total") == [1, 2] and "knn/top1_k10" in good.data.metrics
    for t in failed_sweep["trials"]:
        if t.trial_id == failed_sweep["good"].trial_id:
            continue
        run = runs[t.trial_id]
        tags = run.data.tags
        assert run.info.status == "FAILED"
        assert "knn/top1_k10" not in run.data.metrics
        if t.teacher.label == "diverges":  # never reached Tune
            assert tags["ukd.failure_reason"].startswith("teacher stage failed:"), tags
            assert tags["ukd.failure_epoch"] == "0"
            continue
        failed_at = int(tags["ukd.failure_epoch"])
        if t.trial_id == failed_sweep["damaged"].trial_id:
            assert failed_at == 1  # raised as it started
        else:
            # Which epoch lr 1e6 first makes the loss non-finite in depends on float
            # rounding (memory layout, kernels); the epochs before it were logged, none after.
            assert 1 <= failed_at <= t.train.epochs
            assert store.steps(run, "loss/total") == list(range(1, failed_at))
        assert tags["ukd.attempts"] == "2"  # resources.retries: 1
        expected = ("unreadable checkpoint" if t.trial_id == failed_sweep["damaged"].trial_id
                    else "non-finite loss")
        assert tags["ukd.failure_reason"].startswith(expected), tags
        artifacts = {a.path for a in store.client.list_artifacts(run.info.run_id)}
        assert "failure.json" in artifacts  # with the traceback


def test_report_shows_the_failed_trials(failed_sweep: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["report", str(failed_sweep["out"])])
    assert result.exit_code == 0, result.output
    assert "failed" in result.output


def test_no_ray_process_is_left(failed_sweep: dict[str, Any]) -> None:
    session: Session = failed_sweep["session"]
    assert session.wait_empty(300) == {}
