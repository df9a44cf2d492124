"""A sweep killed at each step of a trial's finish, on purpose, then run again.

The finish sequence of a trial: its last epoch's checkpoint, the epoch's report, the final
evaluation and ``student.pt``, ``final.json``, the final report (trial process); then the
driver's MLflow metrics and artifacts, FINISHED, and the checkpoint's removal (driver). Each
step is a fault-injection point (``common/faults.py``): the process that reaches it kills the
`ukd` driver with SIGKILL exactly there (``UKD_FAULT_AT``, ``UKD_FAULT_KILL=1``; its Ray goes
with it) and writes a marker file the test waits for -- no timing. The rerun must end with
the trial FINISHED once in one run, each epoch's metrics and each periodic evaluation logged
once, the final evaluation logged once, ``ukd.resumed_from_epoch`` set to the checkpoint's
epoch whenever the trial continued from it, and no epoch trained again that the checkpoint
held."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from common import faults
from common.names import TAG_RESUMED_FROM
from orchestrator.engine.member import CHECKPOINT, STUDENT_WEIGHTS
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.orchestrator.sweeps import (
    Session,
    Store,
    shared_cache,
    start_ukd,
    tiny_spec,
    wait_exit,
    wait_for,
    write_spec,
)

EPOCHS = 2


@pytest.mark.parametrize("point", faults.POINTS)
def test_a_sweep_killed_in_the_finish_sequence_finishes_once(
        point: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Periodic evaluation at epoch 1, so its replay is covered too.
    spec = tiny_spec(tmp_path, shared_cache(tmp_path_factory), name="finish",
                     train={"epochs": EPOCHS}, eval={"every": 1})
    path = write_spec(tmp_path / "finish.yaml", spec)
    trial = expand(load_spec(path))[0]
    trial_dir = Path(trial.runtime.trial_dir)
    marker = tmp_path / "fault.marker"
    # The epoch points at the last epoch: the start of the finish sequence.
    at = f"{point}@{EPOCHS}" if point in (faults.EPOCH_SAVED, faults.EPOCH_REPORTED) else point
    log1 = tmp_path / "killed.log"
    proc = start_ukd(["sweep", str(path)], log1, env={
        faults.FAULT_ENV: at, faults.MARKER_ENV: str(marker), faults.KILL_ENV: "1"})
    session = Session(proc.pid)
    try:
        wait_for(marker.is_file, 420, f"the sweep killed at {at}", proc, log1)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        killed_at_ms = int(time.time() * 1000)
        # The rest of the sweep goes down with it, as in a crash of the machine (that Ray's
        # processes also exit by themselves after the driver's death: test_resume.py).
        session.kill_all()
        assert session.wait_empty(60) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        session.kill_all()
    # What the kill left on disk decides what the rerun may do.
    checkpoint = trial_dir / CHECKPOINT
    held = (int(torch.load(checkpoint, weights_only=True)["epoch"])
            if checkpoint.is_file() else None)
    assert held == EPOCHS  # every point of the sequence comes after the last checkpoint
    store = Store.of(tmp_path / "out")
    before = store.runs()
    assert len(before) == 1
    finished_before = before[0].info.status == "FINISHED"
    assert finished_before == (point == faults.RUN_FINISHED)

    log2 = tmp_path / "resumed.log"
    rerun = start_ukd(["sweep", str(path)], log2)  # no fault this time
    rc = wait_exit(rerun, 480, log2)
    output = log2.read_text()
    assert rc == 0, output[-3000:]
    Session(rerun.pid).kill_all()

    runs = store.runs()
    assert len(runs) == 1 and runs[0].info.run_id == before[0].info.run_id
    run = runs[0]
    assert run.info.status == "FINISHED"
    if finished_before:  # nothing left to do: skipped, its checkpoint cleaned up
        assert "1 already finished" in output
        assert TAG_RESUMED_FROM not in run.data.tags
    else:
        assert "1 finished now" in output
        assert run.data.tags[TAG_RESUMED_FROM] == str(held)
    for key in ("loss/total", "loss/cos", "lr", "epoch_time_s"):
        assert store.steps(run, key) == list(range(1, EPOCHS + 1)), key
    assert store.steps(run, "knn/top1_k10") == [1, EPOCHS]  # periodic, then final: once each
    assert len(store.history(run, "train_time_s")) == 1
    # No epoch trained again: every epoch's loss was reported before the kill (a replayed
    # report keeps the time it was first reported).
    assert all(m.timestamp <= killed_at_ms for m in store.history(run, "loss/total"))
    names = {p.name for p in trial_dir.iterdir()}
    assert STUDENT_WEIGHTS in names and CHECKPOINT not in names
