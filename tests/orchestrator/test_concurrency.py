"""Four trials at once (fractional CPUs) against the embedded SQLite store: the driver is the
only writer, so no run, param or metric is lost."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.spec.config import flat_params
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

TRIALS = 4


@pytest.fixture(scope="module")
def four_at_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("concurrency")
    spec = tiny_spec(tmp, shared_cache(tmp_path_factory), name="concurrency",
                     grid={"seed": list(range(TRIALS))},
                     resources={"cpu": 0.5, "max_concurrent": TRIALS, "fuse": "off"})
    path = write_spec(tmp / "concurrency.yaml", spec)
    # Its own process (as users run it): Ray started in-process changes the test process's
    # state (e.g. token auth), which later tests attaching to a cluster must not inherit.
    log = tmp / "sweep.log"
    proc = start_ukd(["sweep", str(path)], log)
    session = Session(proc.pid)
    try:
        proc.wait(timeout=480)
        result = Finished(proc.returncode, log.read_text())
        yield {"result": result, "trials": expand(load_spec(path)), "out": tmp / "out",
               "session": session}
    finally:
        if proc.poll() is None:
            proc.kill()  # the ukd process this test started
            proc.wait(timeout=30)
        session.kill_all()


def test_all_trials_finished(four_at_once: dict[str, Any]) -> None:
    result = four_at_once["result"]
    assert result.returncode == 0, result.output
    assert f"{TRIALS} trials: {TRIALS} finished now, 0 already finished, 0 failed" in \
        result.output
    # The summary says where the time went, every phase in the order it ran.
    phases = re.search(r"time: (.*)", result.output)
    assert phases, result.output
    assert [p.rsplit(" ", 1)[0] for p in phases.group(1).split(", ")] == [
        "setup", "ray start", "stages", "references", "trials", "shutdown"]
    # With fuse: off each trial is its own Ray Tune trial, and the resources admit all of
    # them at once. Whether they overlap in time is the scheduler's business (a fast trial
    # may end before a slow actor starts), so no assertion on start and end times here.
    assert len(Store.of(four_at_once["out"]).runs()) == TRIALS


def test_no_run_param_or_metric_is_lost(four_at_once: dict[str, Any]) -> None:
    store = Store.of(four_at_once["out"])
    runs = {r.data.tags["ukd.trial_id"]: r for r in store.runs()}
    trials = four_at_once["trials"]
    assert sorted(runs) == sorted(t.trial_id for t in trials)
    for t in trials:
        run = runs[t.trial_id]
        assert run.info.status == "FINISHED"
        assert run.data.params == flat_params(t)
        for key in ("loss/total", "loss/cos", "lr", "epoch_time_s"):
            assert store.steps(run, key) == [1, 2], (t.trial_id, key)
        finals = {"knn/top1_k10", "knn/top5_k10", "teacher_knn/top1_k10",
                  "teacher_knn/top5_k10", "train_time_s"}
        assert finals <= set(run.data.metrics), (t.trial_id, set(run.data.metrics))
        for key in finals - {"teacher_knn/top1_k10", "teacher_knn/top5_k10"}:
            assert store.steps(run, key) == [2], (t.trial_id, key)
        assert {a.path for a in store.client.list_artifacts(run.info.run_id)} >= {
            "config.yaml", "student.pt"}


def test_ray_processes_are_gone(four_at_once: dict[str, Any]) -> None:
    session: Session = four_at_once["session"]
    assert session.wait_empty(300) == {}
