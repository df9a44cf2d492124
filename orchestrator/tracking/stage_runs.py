"""The runs of the stages beside the trials, children of the sweep's run: a freshly
pretrained teacher (its pretraining curves and kNN accuracy) and the reference rows
(untrained, supervised, SSL-only students)."""

from __future__ import annotations

import json
from typing import Any

from mlflow.entities import Metric, Param

from common import names as N
from models.pretrain import RECIPES
from orchestrator.spec.config import (
    DatasetConfig,
    PretrainSource,
    ReferenceConfig,
    ReferenceReport,
    TeacherConfig,
    TeacherReport,
)
from orchestrator.tracking.store import dataset_input, log_metric_batches, now_ms
from orchestrator.tracking.sweep import SweepRuns


class StageRuns(SweepRuns):
    def log_teacher(self, teacher: TeacherConfig, report: TeacherReport) -> None:
        """A freshly pretrained teacher as its own run (child of the sweep)."""
        assert self.parent_run_id is not None
        run = self.client.create_run(
            self.experiment_id, run_name=f"teacher {report.label}",
            tags={N.TAG_KIND: N.KIND_TEACHER, N.TAG_TEACHER_HASH: report.key,
                  N.TAG_TEACHER: report.label, N.TAG_PARENT: self.parent_run_id,
                  N.TAG_TEACHER_DIR: report.directory})
        run_id = run.info.run_id
        params: dict[str, Any] = {"label": teacher.label, "arch": teacher.arch,
                                  "source": teacher.source.source, "key": teacher.key}
        if isinstance(teacher.source, PretrainSource):
            pretrain = teacher.source.pretrain.to_dict()
            params.update({f"pretrain.{k}": v for k, v in pretrain.items()})
        self.client.log_batch(run_id, params=[Param(k, json.dumps(v) if isinstance(v, list | dict)
                                                    else str(v)) for k, v in params.items()])
        stamp = now_ms()
        metrics = [Metric(f"{N.PRETRAIN_PREFIX}{k}", float(v), stamp, int(row["epoch"]))
                   for row in report.history for k, v in row.items() if k != "epoch"]
        last = max((int(r["epoch"]) for r in report.history), default=0)
        metrics += [Metric(f"{N.KNN_PREFIX}{k}", float(v), stamp, last)
                    for k, v in report.knn.items()]
        metrics.append(Metric(N.TRAIN_TIME, float(report.train_time_s), stamp, last))
        if report.test_top1 is not None:
            metrics.append(Metric(N.TEACHER_TEST_TOP1, float(report.test_top1), stamp, last))
        log_metric_batches(self.client, run_id, metrics)
        supervised = isinstance(teacher.source, PretrainSource) and \
            RECIPES[teacher.source.pretrain.recipe].needs_labels
        self.client.log_inputs(run_id, [dataset_input(DatasetConfig(teacher.dataset,
                                                                    labels=supervised))])
        self.client.set_terminated(run_id, status="FINISHED")

    def logged_references(self) -> set[str]:
        """Run keys (``ukd.reference_key``) of this sweep's FINISHED reference runs."""
        assert self.parent_run_id is not None
        runs = self._search(f"tags.`{N.TAG_PARENT}` = '{self.parent_run_id}' "
                            f"and tags.`{N.TAG_KIND}` = '{N.KIND_REFERENCE}'")
        return {r.data.tags.get(N.TAG_REFERENCE_KEY, "") for r in runs
                if r.info.status == "FINISHED"}

    def log_reference(self, ref: ReferenceConfig, report: ReferenceReport | None,
                      failure: str | None = None) -> str:
        """A reference row's run (child of the sweep): tags ``ukd.kind=reference``,
        ``ukd.reference``, ``ukd.student``; params (``seed``, the recipe, the evaluation);
        the evaluators' metrics, and ``pretrain/*`` per epoch for trained references. With
        ``failure`` the run is FAILED with that reason."""
        assert self.parent_run_id is not None
        tags = {N.TAG_KIND: N.KIND_REFERENCE, N.TAG_PARENT: self.parent_run_id,
                N.TAG_REFERENCE: ref.kind, N.TAG_STUDENT: ref.student,
                N.TAG_REFERENCE_KEY: ref.run_key,
                N.TAG_SWEEP_ID: self._parent_tag(N.TAG_SWEEP_ID)}
        if report is not None:
            tags[N.TAG_REFERENCE_DIR] = report.directory
        if failure is not None:
            tags[N.TAG_FAILURE_REASON] = failure[:4000]
        run_id = str(self.client.create_run(self.experiment_id, run_name=ref.label,
                                            tags=tags).info.run_id)
        self.client.log_batch(run_id, params=[Param(k, v[:6000])
                                              for k, v in ref.params().items()])
        self.client.log_inputs(run_id, [dataset_input(ref.dataset)])
        if report is not None:
            stamp = now_ms()
            last = max((int(r["epoch"]) for r in report.history), default=0)
            metrics = [Metric(f"{N.PRETRAIN_PREFIX}{k}", float(v), stamp, int(row["epoch"]))
                       for row in report.history for k, v in row.items() if k != "epoch"]
            metrics += [Metric(k, float(v), stamp, last) for k, v in report.metrics.items()]
            metrics.append(Metric(N.TRAIN_TIME, float(report.train_time_s), stamp, last))
            log_metric_batches(self.client, run_id, metrics)
        self.client.set_terminated(run_id, status="FAILED" if failure else "FINISHED")
        return run_id
