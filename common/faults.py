"""Fault-injection points: stop a sweep at one exact step, on purpose, for the crash tests.

A crash test that kills a process "some time after" an event tests whichever step the kill
happens to land on. Instead, the code calls :func:`reach` at each step of a sequence that must
survive a crash (a trial's finish: checkpoint, report, weights, ``final.json``; the driver's
MLflow FINISHED and clean-up), and a test names one point in ``UKD_FAULT_AT`` (``POINT`` or
``POINT@EPOCH``, the epoch 1-based). The process that reaches that point writes the file named
by ``UKD_FAULT_MARKER`` and takes no further step (it blocks). With ``UKD_FAULT_KILL=1`` it
also kills the sweep's driver there and then (SIGKILL; the driver exports its pid as
``UKD_FAULT_DRIVER_PID`` before Ray starts, so local trial processes find it): nothing the
driver had not done by that point gets done. Without it the test kills the sweep once the
marker is there (the driver may meanwhile handle what was already reported to it).

Without ``UKD_FAULT_AT`` every call is one environment lookup and returns.
"""

from __future__ import annotations

import os
import signal
import threading

from common.atomic import atomic_write

FAULT_ENV = "UKD_FAULT_AT"
MARKER_ENV = "UKD_FAULT_MARKER"
KILL_ENV = "UKD_FAULT_KILL"
DRIVER_PID_ENV = "UKD_FAULT_DRIVER_PID"

# Trial side, in the order of a trial's last epoch and finish.
EPOCH_SAVED = "epoch_saved"  # a member's epoch checkpoint is on disk, its epoch not reported
EPOCH_REPORTED = "epoch_reported"  # the epoch's metrics were handed to Ray Tune
WEIGHTS_SAVED = "weights_saved"  # student.pt written, the final metrics not yet handed on
FINAL_WRITTEN = "final_written"  # final.json written, not yet reported to Ray Tune
# (Once tune.report has handed the final metrics on, the driver already holds them: the steps
# after that are the driver's points below, which stop it at each one deterministically.)
# Driver side.
FINAL_RECEIVED = "final_received"  # the driver got the final metrics, MLflow not yet told
FINAL_LOGGED = "final_logged"  # final metrics and artifacts in MLflow, the run still RUNNING
RUN_FINISHED = "run_finished"  # the run is FINISHED, the trial's checkpoint not yet removed

TRIAL_POINTS = (EPOCH_SAVED, EPOCH_REPORTED, WEIGHTS_SAVED, FINAL_WRITTEN)
DRIVER_POINTS = (FINAL_RECEIVED, FINAL_LOGGED, RUN_FINISHED)
POINTS = TRIAL_POINTS + DRIVER_POINTS


def arm_driver() -> None:
    """In the driver, before Ray starts: let trial processes find the driver to kill."""
    if os.environ.get(FAULT_ENV):
        os.environ[DRIVER_PID_ENV] = str(os.getpid())


def forwarded() -> dict[str, str]:
    """The fault settings of this process, for processes that do not inherit its
    environment (trials on the nodes of a Ray cluster); empty without a fault."""
    return {k: os.environ[k] for k in (FAULT_ENV, MARKER_ENV) if os.environ.get(k)}


def armed() -> bool:
    """Whether this process runs under a fault point (``UKD_FAULT_AT`` set)."""
    return bool(os.environ.get(FAULT_ENV))


def reach(point: str, epoch: int | None = None) -> None:
    """Stop here if ``UKD_FAULT_AT`` names this point (and this epoch)."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, at_epoch = wanted.partition("@")
    if name != point or (at_epoch and epoch is not None and int(at_epoch) != epoch):
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        atomic_write(marker, lambda f: f.write(f"{point} {epoch} {os.getpid()}\n".encode()))
    if os.environ.get(KILL_ENV) == "1":
        os.kill(int(os.environ.get(DRIVER_PID_ENV, os.getpid())), signal.SIGKILL)
    threading.Event().wait()  # until the sweep is killed
