"""Interruptions other than Ctrl+C: a closed terminal (the sweep runs in a pseudo-terminal
that is then closed, as when a terminal window or a tmux session is killed: SIGHUP) and
SIGTERM (`kill`, a scheduler's preemption), during the trials or during the teacher stage.
Either stops the sweep like Ctrl+C: the parent run and the running trials are marked KILLED
(resumable), never left RUNNING, and no process of the sweep's session is left."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.orchestrator.sweeps import (
    Session,
    Store,
    ignores,
    shared_cache,
    start_in_terminal,
    start_ukd,
    tiny_spec,
    wait_exit,
    wait_for,
    write_spec,
)

# Far more epochs than the trials get through before the signal: they are mid-training.
EPOCHS = 200


@pytest.fixture(scope="module", params=["hangup", "sigterm"])
def interrupted(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    how = str(request.param)
    tmp = tmp_path_factory.mktemp(f"signal-{how}")
    spec = tiny_spec(tmp, shared_cache(tmp_path_factory), name=f"signal-{how}",
                     grid={"seed": [0, 1]}, train={"epochs": EPOCHS})
    path = write_spec(tmp / "sweep.yaml", spec)
    dirs = [Path(t.runtime.trial_dir) for t in expand(load_spec(path))]
    log = tmp / "terminal.log"
    terminal = start_in_terminal(["sweep", str(path)], log)
    proc = terminal.proc
    session = Session(proc.pid)
    try:
        # Both trials are training (an epoch checkpointed each): inside Tune's fit.
        wait_for(lambda: all((d / "checkpoint.pt").is_file() for d in dirs), 480,
                 "both trials to checkpoint an epoch", proc, log)
        ray_processes = {pid: ignores(pid, signal.SIGHUP) for pid in session.sample()
                         if pid != proc.pid}
        if how == "hangup":
            terminal.hang_up()  # the kernel sends SIGHUP; the terminal is gone
        else:
            os.kill(proc.pid, signal.SIGTERM)  # the ukd process this test started
        rc = wait_exit(proc, 300, log)
        yield {"how": how, "rc": rc, "out": tmp / "out", "session": session,
               "output": log.read_text(errors="replace"), "trials": len(dirs),
               "ray_processes": ray_processes}
    finally:
        terminal.hang_up()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        session.kill_all()


def test_running_trials_and_the_sweep_are_killed_not_running(
        interrupted: dict[str, Any]) -> None:
    store = Store.of(interrupted["out"])
    runs = store.runs()
    assert len(runs) == interrupted["trials"], interrupted["output"][-3000:]
    assert {r.info.status for r in runs} == {"KILLED"}, interrupted["output"][-3000:]
    assert store.parent().info.status == "KILLED"


def test_the_sweeps_ray_ignores_the_hangup(interrupted: dict[str, Any]) -> None:
    """Ray's processes are in the terminal's foreground group with the sweep: they ignore
    SIGHUP (inherited), so they cannot die under the sweep before it stops its trials."""
    ray_processes = {pid: ignored for pid, ignored in interrupted["ray_processes"].items()
                     if ignored is not None}
    assert ray_processes and all(ray_processes.values()), ray_processes


def test_sigterm_exits_130_and_says_how_to_continue(interrupted: dict[str, Any]) -> None:
    if interrupted["how"] != "sigterm":
        pytest.skip("a closed terminal shows nothing (its output has nowhere to go)")
    assert interrupted["rc"] == 130, interrupted["output"][-3000:]
    assert "run the same command again to continue" in interrupted["output"]


def test_no_process_of_the_sweep_is_left(interrupted: dict[str, Any]) -> None:
    session: Session = interrupted["session"]
    assert len(session.seen) > 1  # sampled while its Ray was up
    assert session.wait_empty(300) == {}


# A sweep started in the background by a script (`ukd sweep ... &`) inherits SIGINT ignored:
# SIGTERM must stop it all the same.
BACKGROUND = ["sh", "-c", "trap '' INT; exec \"$0\" \"$@\""]


@pytest.fixture(scope="module", params=["foreground", "background"])
def interrupted_stage(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """SIGTERM while the teacher stage trains (a teacher of its own, far more pretraining
    epochs than it gets through): before any trial started."""
    tmp = tmp_path_factory.mktemp(f"signal-stage-{request.param}")
    spec = tiny_spec(tmp, tmp / "cache", name="signal-stage")
    spec["teachers"]["t"]["pretrain"]["epochs"] = EPOCHS
    path = write_spec(tmp / "sweep.yaml", spec)
    log = tmp / "sweep.log"
    proc = start_ukd(["sweep", str(path)], log,
                     prefix=BACKGROUND if request.param == "background" else None)
    session = Session(proc.pid)
    try:
        wait_for(lambda: "stage: 1 teacher(s)" in log.read_text(), 300, "the stage", proc, log)
        session.sample()
        os.kill(proc.pid, signal.SIGTERM)  # the ukd process this test started
        rc = wait_exit(proc, 300, log)
        yield {"rc": rc, "out": tmp / "out", "session": session, "output": log.read_text()}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        session.kill_all()


def test_sigterm_in_the_stage_kills_the_sweep_run(interrupted_stage: dict[str, Any]) -> None:
    output = interrupted_stage["output"]
    assert interrupted_stage["rc"] == 130, output[-3000:]
    assert "interrupted: the sweep's runs are marked KILLED; run the same command again" \
        in output
    store = Store.of(interrupted_stage["out"])
    assert store.parent().info.status == "KILLED"
    assert store.runs() == []  # no trial had started
    assert interrupted_stage["session"].wait_empty(300) == {}
