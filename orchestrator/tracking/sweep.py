"""The sweep's parent run: opened (or reopened on resume, found by its ``ukd.sweep_id`` tag),
its artifacts, its summary metrics from the trial runs, closed with the sweep's status.

:class:`SweepRuns` holds what every kind of run needs: the client, the experiment and the
parent run; :mod:`.trials` and :mod:`.stage_runs` add the child runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Run, RunTag
from mlflow.exceptions import MlflowException

from common import names as N
from orchestrator.tracking.store import now_ms, open_experiment


class SweepRuns:
    def __init__(self, tracking_uri: str, experiment_name: str,
                 artifact_dir: Path | None = None) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = open_experiment(self.client, tracking_uri, experiment_name,
                                             artifact_dir)
        self.parent_run_id: str | None = None

    def _search(self, filter_string: str) -> list[Run]:
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string,
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def open_sweep(self, sweep_id: str, name: str, tags: Mapping[str, str],
                   parent_run_id: str | None = None) -> str:
        """Create the parent run, or reopen the one of an earlier process of this sweep."""
        if parent_run_id is None:
            found = self._search(
                f"tags.`{N.TAG_KIND}` = '{N.KIND_SWEEP}' and "
                f"tags.`{N.TAG_SWEEP_ID}` = '{sweep_id}'")
            parent_run_id = found[0].info.run_id if found else None
        if parent_run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=name,
                                         tags={N.TAG_KIND: N.KIND_SWEEP,
                                               N.TAG_SWEEP_ID: sweep_id, **tags})
            parent_run_id = run.info.run_id
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
            self.client.log_batch(parent_run_id,
                                  tags=[RunTag(k, v) for k, v in tags.items()])
        self.parent_run_id = parent_run_id
        return parent_run_id

    def log_sweep_artifact(self, path: Path) -> None:
        assert self.parent_run_id is not None
        self.client.log_artifact(self.parent_run_id, str(path))

    def close_sweep(self, status: str) -> None:
        if self.parent_run_id is not None:
            try:
                self.log_summary()
            except MlflowException:  # a summary is no reason to leave the parent RUNNING
                pass
            self.client.set_terminated(self.parent_run_id, status=status)

    def log_summary(self) -> dict[str, float]:
        """The parent run's summary metrics from its trial runs: ``trials/<status>`` counts
        (finished, failed, killed, running) and ``best/<metric>`` for each top-1 metric of the
        evaluators (the best FINISHED trial's final value)."""
        assert self.parent_run_id is not None
        runs = [r for group in self.existing_trials().values() for r in group]
        counts = {s: 0 for s in ("finished", "failed", "killed", "running")}
        best: dict[str, float] = {}
        for run in runs:
            status = run.info.status.lower()
            counts[status if status in counts else "failed"] += 1
            if run.info.status != "FINISHED":
                continue
            for key, value in run.data.metrics.items():
                if key.startswith(N.EVALUATOR_PREFIXES) and "top1" in key \
                        and not key.endswith(N.BEST_EPOCH_SUFFIX) and value == value:
                    best[key] = max(value, best.get(key, float("-inf")))
        summary = {f"{N.SUMMARY_PREFIX}{k}": float(v) for k, v in counts.items()}
        summary.update({f"{N.BEST_PREFIX}{k}": v for k, v in best.items()})
        stamp = now_ms()
        self.client.log_batch(self.parent_run_id,
                              metrics=[Metric(k, v, stamp, 0) for k, v in summary.items()])
        return summary

    def existing_trials(self) -> dict[str, list[Run]]:
        assert self.parent_run_id is not None
        runs = self._search(f"tags.`{N.TAG_PARENT}` = '{self.parent_run_id}' "
                            f"and tags.`{N.TAG_KIND}` = '{N.KIND_TRIAL}'")
        by_trial: dict[str, list[Run]] = {}
        for run in runs:
            by_trial.setdefault(run.data.tags.get(N.TAG_TRIAL_ID, ""), []).append(run)
        return by_trial

    def _parent_tag(self, key: str) -> str:
        assert self.parent_run_id is not None
        return str(self.client.get_run(self.parent_run_id).data.tags.get(key, ""))
