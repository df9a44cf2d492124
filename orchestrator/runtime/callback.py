"""The Ray Tune side of a sweep: the trainable a group of trials runs in, and the driver's
callback that turns Tune events into MLflow runs (the single writer) and the live display.

A Tune trial is a group (orchestrator/engine); its members report with ``MEMBER_KEY`` naming
their trial, and the callback fans the results out to one MLflow run per member.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from common import faults, names
from common.atomic import write_json
from orchestrator.engine.member import CHECKPOINT, RESUMED, checkpoint_resume
from orchestrator.progress import SweepProgress
from orchestrator.runtime.gpu import wait_for_memory
from orchestrator.spec.config import TrialConfig
from orchestrator.stages.trials import run_group
from orchestrator.tracking import Tracker

FAILURE_FILE = "failure.json"
FINAL_FILE = "final.json"  # a member's final metrics, so a retried group does not rerun it
MEMBER_KEY = "ukd_trial"  # Tune owns "trial_id" in a result
NODE_KEY = "ukd_node"
GROUP_KEY = "group"


def group_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: runs one group, records why members failed."""
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
    by_id = {t.trial_id: t for t in todo}

    def report(trial_id: str, metrics: dict[str, Any]) -> None:
        directory = Path(by_id[trial_id].runtime.trial_dir)
        if metrics.get("kind") == "failed":
            write_json(directory / FAILURE_FILE, {"reason": metrics["reason"],
                                                  "epoch": metrics["epoch"],
                                                  "traceback": traceback.format_exc()})
        elif metrics.get("kind") == "final":
            write_json(directory / FINAL_FILE, metrics)
            faults.reach(faults.FINAL_WRITTEN, int(metrics["epoch"]))
        tune.report({MEMBER_KEY: trial_id, **metrics})

    import ray

    if ray.is_initialized():  # in a Ray worker: the driver tags each run with its node
        node = ray.get_runtime_context().get_node_id()
        for trial in todo:
            tune.report({MEMBER_KEY: trial.trial_id, "kind": "node", NODE_KEY: node})
    try:
        wait_for_memory(todo)  # a shared GPU: until the previous trial freed its share
        outcomes = run_group(todo, report)
    except Exception as exc:  # the group itself broke (data, teacher): every member fails
        reason = f"{type(exc).__name__}: {exc}"
        for trial in todo:
            write_json(Path(trial.runtime.trial_dir) / FAILURE_FILE,
                       {"reason": reason, "epoch": 1, "traceback": traceback.format_exc()})
        raise RuntimeError(f"group failed: {reason}") from None
    failed = [o for o in outcomes.values() if o.failure is not None]
    if failed:
        # A plain RuntimeError (Ray copies and pickles it, which TrialFailure's constructor
        # does not allow): Tune retries the group (resources.retries) or reports its error;
        # each member's reason is in its failure.json.
        raise RuntimeError("; ".join(f"trial {o.trial_id} failed at epoch "
                                     f"{o.failure.epoch}: {o.failure.reason}"
                                     for o in failed if o.failure is not None))


def read_failure(trial: TrialConfig, ray_trial: Any = None) -> tuple[str, int | None]:
    path = Path(trial.runtime.trial_dir) / FAILURE_FILE
    try:
        data = json.loads(path.read_text())
        return str(data.get("reason", "unknown")), data.get("epoch")
    except (OSError, ValueError):
        pass
    # No reason written: the group's process died (killed, out of memory, crashed).
    text = ""
    try:
        text = str(ray_trial.get_error() or "") if ray_trial is not None else ""
    except Exception:  # Tune's error file is best effort
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = f": {lines[-1][:300]}" if lines else ""
    return f"the trial's process ended without a recorded reason{detail}", None


def short(reason: str, limit: int = 300) -> str:
    """A failure reason on one line, for the terminal (MLflow and failure.json keep it all)."""
    text = " ".join(reason.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class SweepCallback(tune.Callback):
    """Driver-side bridge from Ray Tune events to MLflow and the display.

    Ray pickles the run config, callbacks included, into its experiment state: the tracker and
    the live display stay in this driver process and are left out of the pickle.
    """

    def __init__(self, tracker: Tracker, by_id: Mapping[str, TrialConfig],
                 progress: SweepProgress, outcome: Any, names: Mapping[str, str],
                 headline: str) -> None:
        self.tracker = tracker
        self.by_id = by_id
        self.progress = progress
        self.outcome = outcome
        self.names = names
        self.headline = headline
        self.attempts: dict[str, int] = {}
        self.done: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def _members(self, ray_trial: Any) -> list[TrialConfig]:
        return [self.by_id[d["trial_id"]] for d in ray_trial.config[GROUP_KEY]]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        members = self._members(trial)
        group = trial.trial_id if len(members) > 1 else None
        for t in members:
            if t.trial_id in self.done:
                continue
            self.attempts[t.trial_id] = self.attempts.get(t.trial_id, 0) + 1
            self.tracker.start_trial(t, group)
            self.progress.update(t.trial_id, status="running", reason="")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        for t in self._members(trial):
            if t.trial_id not in self.done:
                reason, _ = read_failure(t, trial)
                self.progress.update(t.trial_id, status="running",
                                     reason=f"retrying after: {short(reason, 120)}")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        t = self.by_id[result[MEMBER_KEY]]
        kind = result.get("kind")
        if kind == RESUMED:
            # Continues from its checkpoint: the epoch it held, and every report before it,
            # since the dead driver may not have got them all to MLflow (logged if missing).
            self.tracker.set_trial_tags(t.trial_id, {
                names.TAG_RESUMED_FROM: str(int(result["resumed_from_epoch"]))})
            self.tracker.log_missing(t.trial_id, result["history"])
        elif kind == "node":
            self.tracker.set_trial_tags(t.trial_id, {names.TAG_NODE_ID: str(result[NODE_KEY])})
        elif kind == "eval":  # periodic evaluation: its metrics at step = epoch
            self.tracker.log_eval(t.trial_id, result)
        elif kind == "epoch":
            self.tracker.log_epoch(t.trial_id, result)
            self.progress.update(t.trial_id, epoch=int(result["epoch"]),
                                 loss=result.get("loss/total"))
        elif kind == "final" and t.trial_id not in self.done:
            faults.reach(faults.FINAL_RECEIVED)
            final = {k: v for k, v in result.items() if not k.startswith("teacher_")}
            self.tracker.finish_trial(t, final)
            faults.reach(faults.RUN_FINISHED)
            # FINISHED is final (never resumed): the weights are the artifact, the optimiser
            # checkpoint only served resuming.
            (Path(t.runtime.trial_dir) / CHECKPOINT).unlink(missing_ok=True)
            self.done.add(t.trial_id)
            self.outcome.finished.append(t.trial_id)
            self.progress.update(t.trial_id, status="finished", reason="",
                                 score=result.get(self.headline))
        elif kind == "failed":
            self.progress.update(t.trial_id, status="failed",
                                 reason=short(str(result.get("reason", "")), 120))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        for t in self._members(trial):
            if t.trial_id in self.done:
                continue
            reason, epoch = read_failure(t, trial)
            failure = Path(t.runtime.trial_dir) / FAILURE_FILE
            self.tracker.fail_trial(t.trial_id, reason, epoch,
                                    attempts=self.attempts.get(t.trial_id, 1),
                                    artifact=failure if failure.is_file() else None)
            self.outcome.failed[self.names.get(t.trial_id, t.label)] = short(reason)
            self.progress.update(t.trial_id, status="failed", reason=short(reason, 120))

