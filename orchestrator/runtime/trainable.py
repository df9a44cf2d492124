"""The Ray Tune trainable of a sweep: one fused group of trials in a trial actor.

Kept apart from the driver's callback (orchestrator/runtime/callback.py) so that a trial
actor imports what training needs and not the driver's MLflow client: the actor's start-up
is on the sweep's critical path.
"""

from __future__ import annotations

import json
import queue
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from common import faults
from common.atomic import write_json
from orchestrator.engine.member import checkpoint_resume
from orchestrator.runtime.gpu import wait_for_memory
from orchestrator.spec.config import TrialConfig
from orchestrator.stages.trials import run_group

FAILURE_FILE = "failure.json"
FINAL_FILE = "final.json"  # a member's final metrics, so a retried group does not rerun it
MEMBER_KEY = "ukd_trial"  # Tune owns "trial_id" in a result
NODE_KEY = "ukd_node"
GROUP_KEY = "group"


def group_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: runs one group, records why members failed.

    The group trains in a thread of its own and hands its reports to this one (Tune's), which
    passes them to ``tune.report`` in order. A function trainable's ``tune.report`` blocks
    until the driver has handled the result and asked for the next one (MLflow writes
    included): called from the training loop, every epoch of every member waited for that
    round trip. Now training goes on while the driver logs."""
    trials = [TrialConfig.from_dict(d) for d in config[GROUP_KEY]]
    todo: list[TrialConfig] = []
    for trial in trials:
        directory = Path(trial.runtime.trial_dir)
        (directory / FAILURE_FILE).unlink(missing_ok=True)
        done = directory / FINAL_FILE
        if done.is_file():  # finished in an earlier attempt of this group: report it again,
            # with its checkpoint's history (the driver that got it first may have died)
            resumed = checkpoint_resume(directory)
            if resumed is not None:
                tune.report({MEMBER_KEY: trial.trial_id, **resumed})
            tune.report({MEMBER_KEY: trial.trial_id, **json.loads(done.read_text())})
        else:
            todo.append(trial)
    import ray

    if ray.is_initialized():  # in a Ray worker: the driver tags each run with its node
        node = ray.get_runtime_context().get_node_id()
        for trial in todo:
            tune.report({MEMBER_KEY: trial.trial_id, "kind": "node", NODE_KEY: node})
    reports = ReportQueue(tune.report)
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=_train_group, args=(todo, reports, outcome),
                              name="ukd-group", daemon=True)  # dies with the actor on stop
    worker.start()
    reports.forward()  # until the group's thread is done
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    if "members" not in outcome:  # the thread ended some other way (SystemExit)
        raise RuntimeError("group failed: its training thread ended without an outcome")
    failed = [o for o in outcome["members"].values() if o.failure is not None]
    if failed:
        # A plain RuntimeError (Ray copies and pickles it, which TrialFailure's constructor
        # does not allow): Tune retries the group (resources.retries) or reports its error;
        # each member's reason is in its failure.json.
        raise RuntimeError("; ".join(f"trial {o.trial_id} failed at epoch "
                                     f"{o.failure.epoch}: {o.failure.reason}"
                                     for o in failed if o.failure is not None))


class ReportQueue:
    """Reports from a group's training thread to the thread that may call ``tune.report``.

    :meth:`put` returns at once -- except while a fault point is armed (the crash tests):
    then it returns once ``tune.report`` has taken the metrics, so that "reported" at a
    fault point means what it meant when training called ``tune.report`` itself."""

    _DONE = object()

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self._send = send
        self._items: queue.Queue[Any] = queue.Queue()  # a few small dicts an epoch

    def put(self, metrics: dict[str, Any]) -> None:
        taken = threading.Event() if faults.armed() else None
        self._items.put((metrics, taken))
        if taken is not None:
            taken.wait()

    def close(self) -> None:
        self._items.put(self._DONE)

    def forward(self) -> None:
        """Send every report, in order, until :meth:`close`."""
        while (item := self._items.get()) is not self._DONE:
            metrics, taken = item
            self._send(metrics)
            if taken is not None:
                taken.set()


def _train_group(todo: list[TrialConfig], reports: ReportQueue, outcome: dict[str, Any]
                 ) -> None:
    """The group's training thread: ``outcome`` gets ``members`` (the group's outcomes) or
    ``error`` (the exception for Tune, once every earlier report is sent)."""

    def report(trial_id: str, metrics: dict[str, Any]) -> None:
        directory = Path(by_id[trial_id].runtime.trial_dir)
        if metrics.get("kind") == "failed":
            write_json(directory / FAILURE_FILE, {"reason": metrics["reason"],
                                                  "epoch": metrics["epoch"],
                                                  "traceback": traceback.format_exc()})
        elif metrics.get("kind") == "final":
            write_json(directory / FINAL_FILE, metrics)
            faults.reach(faults.FINAL_WRITTEN, int(metrics["epoch"]))
        reports.put({MEMBER_KEY: trial_id, **metrics})

    by_id = {t.trial_id: t for t in todo}
    try:
        wait_for_memory(todo)  # a shared GPU: until the previous trial freed its share
        outcome["members"] = run_group(todo, report)
    except Exception as exc:  # the group itself broke (data, teacher): every member fails
        reason = f"{type(exc).__name__}: {exc}"
        for trial in todo:
            write_json(Path(trial.runtime.trial_dir) / FAILURE_FILE,
                       {"reason": reason, "epoch": 1, "traceback": traceback.format_exc()})
        outcome["error"] = RuntimeError(f"group failed: {reason}")
    finally:
        reports.close()
