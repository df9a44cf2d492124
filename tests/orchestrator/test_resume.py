"""Resume after SIGKILL: a real `ukd sweep` process is killed once one trial has finished and
another is held right after an epoch checkpoint (a fault-injection point, no race);
`ukd sweep --resume` (with one trial added to the grid) then finishes the sweep. Also: the
killed driver's Ray processes exit, and an existing sweep's grid may grow but not change."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from common import faults
from common.locks import exclusive_lock
from orchestrator.cli import app
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.orchestrator.sweeps import (
    Session,
    Store,
    listening_sockets,
    shared_cache,
    start_ukd,
    tiny_spec,
    wait_exit,
    wait_for,
    write_spec,
)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("resume")
    # Two trials, one at a time in grid order: 1 epoch, then 3 epochs. The 3-epoch one
    # starts after the other finished, so "one finished, one mid-training" comes without a
    # race between them (side by side, a late start of the short one could let the long
    # one finish first).
    spec = tiny_spec(tmp, shared_cache(tmp_path_factory), name="resume",
                     grid={"epochs": [1, 3]}, resources={"max_concurrent": 1})
    path = write_spec(tmp / "resume.yaml", spec)
    first = expand(load_spec(path))
    short = next(t for t in first if t.train.epochs == 1)
    long = next(t for t in first if t.train.epochs == 3)
    short_dir, long_dir = Path(short.runtime.trial_dir), Path(long.runtime.trial_dir)

    procs = []
    sessions: list[Session] = []
    marker = tmp / "fault.marker"
    try:
        log1 = tmp / "killed.log"
        # The long trial is held right after its epoch-2 checkpoint (common/faults.py): the
        # short one has finished by then (one trial at a time), the long one has epoch 3 to go.
        proc = start_ukd(["sweep", str(path)], log1,
                         env={faults.FAULT_ENV: f"{faults.EPOCH_SAVED}@2",
                              faults.MARKER_ENV: str(marker)})
        procs.append(proc)
        sessions.append(Session(proc.pid))
        wait_for(marker.is_file, 420, "the long trial held after its epoch-2 checkpoint",
                 proc, log1)
        assert (short_dir / "student.pt").is_file() and not (long_dir / "student.pt").exists()
        sessions[0].sample()  # mid-sweep: its Ray is up, a trial is held in its epoch
        # The sweep's own Ray: the address it recorded, served from the sweep's session.
        gcs_port = Store.of(tmp / "out").parent().data.tags["ukd.ray_address"].rsplit(":")[-1]
        served = [address for address, _ in listening_sockets(sessions[0].members())]
        os.kill(proc.pid, signal.SIGKILL)  # the ukd process this test started, nothing else
        proc.wait(timeout=30)
        killed_at_ms = int(time.time() * 1000)
        # Once the killed session is gone nothing writes the checkpoint any more: its epoch
        # (2, where the trial was held) is what the resume must start from.
        leftover = sessions[0].wait_empty(300)
        assert leftover == {}, leftover
        checkpoint_epoch = int(torch.load(long_dir / "checkpoint.pt", weights_only=False)["epoch"])
        store = Store.of(tmp / "out")
        before = {r.data.tags["ukd.trial_id"]: (r.info.run_id, r.info.status)
                  for r in store.runs()}

        spec["grid"]["epochs"] = [1, 3, 2]  # the grid grows by one trial
        spec["resources"]["max_concurrent"] = 2  # not part of a trial's id
        write_spec(path, spec)
        log2 = tmp / "resumed.log"
        proc2 = start_ukd(["sweep", str(path), "--resume"], log2)
        procs.append(proc2)
        sessions.append(Session(proc2.pid))
        rc = wait_exit(proc2, 480, log2)
        yield {"tmp": tmp, "path": path, "spec": spec, "short": short, "long": long,
               "before": before, "killed_at_ms": killed_at_ms, "rc": rc,
               "checkpoint_epoch": checkpoint_epoch,
               "output": log2.read_text(), "killed": sessions[0], "resumed": sessions[1],
               "out": tmp / "out", "gcs_port": gcs_port, "served": served}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        for session in sessions:
            session.kill_all()


def test_kill_left_one_finished_and_one_running_run(killed_and_resumed: dict[str, Any]) -> None:
    before = killed_and_resumed["before"]
    assert before[killed_and_resumed["short"].trial_id][1] == "FINISHED"
    assert before[killed_and_resumed["long"].trial_id][1] == "RUNNING"  # left by the dead driver
    assert len(before) == 2


def test_resume_ends_with_one_finished_run_per_trial(killed_and_resumed: dict[str, Any]) -> None:
    result = killed_and_resumed
    assert result["rc"] == 0, result["output"][-3000:]
    assert "3 trials: 2 finished now, 1 already finished, 0 failed" in result["output"]
    store = Store.of(result["out"])
    runs = store.runs()
    expected = {t.trial_id for t in expand(load_spec(result["path"]))}
    assert sorted(r.data.tags["ukd.trial_id"] for r in runs) == sorted(expected)  # no duplicate
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert store.parent().info.status == "FINISHED"
    by_id = {r.data.tags["ukd.trial_id"]: r for r in runs}
    for trial_id, (run_id, _) in result["before"].items():
        assert by_id[trial_id].info.run_id == run_id  # the interrupted run was reused
    for run in runs:
        epochs = int(run.data.params["epochs"])
        for key in ("loss/total", "loss/cos", "lr", "epoch_time_s"):
            assert store.steps(run, key) == list(range(1, epochs + 1)), (key, run.info.run_name)
        assert {"knn/top1_k10", "knn/top5_k10", "teacher_knn/top1_k10", "train_time_s"} <= set(
            run.data.metrics)
        assert len(store.history(run, "knn/top1_k10")) == 1


def test_resumed_trial_continued_from_its_checkpoint(killed_and_resumed: dict[str, Any]) -> None:
    result = killed_and_resumed
    store = Store.of(result["out"])
    by_id = {r.data.tags["ukd.trial_id"]: r for r in store.runs()}
    long = by_id[result["long"].trial_id]
    resumed_from = int(long.data.tags["ukd.resumed_from_epoch"])
    assert resumed_from == result["checkpoint_epoch"] == 2
    after_kill = {m.step for m in store.history(long, "loss/total")
                  if m.timestamp > result["killed_at_ms"]}
    assert set(range(resumed_from + 1, 4)) <= after_kill  # trained after the resume ...
    assert not after_kill & set(range(1, resumed_from))  # ... and not before its checkpoint
    # The finished trial was not run again; the added one ran from scratch.
    short = by_id[result["short"].trial_id]
    assert "ukd.resumed_from_epoch" not in short.data.tags
    assert short.info.end_time <= result["killed_at_ms"]
    added = [r for r in by_id.values() if r.data.params["epochs"] == "2"]
    assert len(added) == 1 and "ukd.resumed_from_epoch" not in added[0].data.tags


def test_finished_trials_keep_weights_not_checkpoints(killed_and_resumed: dict[str, Any]) -> None:
    result = killed_and_resumed
    for trial_dir in (result["out"] / "trials").iterdir():
        names = {p.name for p in trial_dir.iterdir()}
        assert "student.pt" in names and "config.yaml" in names
        assert "checkpoint.pt" not in names  # a FINISHED trial is never resumed
        assert not [n for n in names if n.endswith(".tmp")]
    assert "MiB on disk" in result["output"]


def test_killed_driver_leaves_no_ray_process(killed_and_resumed: dict[str, Any]) -> None:
    """Every process of the killed sweep's session exits: its Ray (whose GCS, at the
    address the sweep recorded, was served from the session when it was killed) and whatever
    workers and agents it had, whatever their names."""
    killed: Session = killed_and_resumed["killed"]
    port = killed_and_resumed["gcs_port"]
    assert any(a.rsplit(":", 1)[-1] == port for a in killed_and_resumed["served"]), \
        (port, killed_and_resumed["served"])
    assert len(killed.seen) > 1
    assert killed.wait_empty(300) == {}
    resumed: Session = killed_and_resumed["resumed"]
    assert resumed.wait_empty(300) == {}


def test_grid_may_grow_but_not_change(killed_and_resumed: dict[str, Any]) -> None:
    result = killed_and_resumed
    out = result["out"]
    def snapshot() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in out.rglob("*")
                if p.is_file() and p.name != "sweep.lock"}

    before = snapshot()
    runner = CliRunner()
    fewer = {**result["spec"], "grid": {**result["spec"]["grid"], "epochs": [1, 3]}}
    changed = write_spec(result["tmp"] / "fewer.yaml", fewer)
    outcome = runner.invoke(app, ["sweep", str(changed)])
    assert outcome.exit_code == 2, outcome.output
    assert "may only grow" in outcome.output and "fewer.yaml at `grid`" in outcome.output
    renamed = write_spec(result["tmp"] / "renamed.yaml", {**result["spec"], "name": "other"})
    outcome = runner.invoke(app, ["sweep", str(renamed)])
    assert outcome.exit_code == 2 and "holds the sweep 'resume'" in outcome.output, \
        outcome.output
    with exclusive_lock(out / "sweep.lock"):  # as if another ukd sweep were running on it
        outcome = runner.invoke(app, ["sweep", str(result["path"])])
    assert outcome.exit_code == 2 and "another ukd sweep" in outcome.output, outcome.output
    assert snapshot() == before  # refused before anything was written
