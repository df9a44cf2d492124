"""Grid expansion: a validated spec -> the list of trial configs (pure, deterministic).

A trial's id is a content hash of everything that decides its result, so the same grid point
always maps to the same id (resume and "add trials" rely on this) and two grid points never
share one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from losses import make_params, param_fields
from orchestrator.spec import SweepSpec, TeacherSpec, _product


def content_hash(payload: Any, length: int = 12) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs, JSON/YAML-serialisable; paths are absolute."""

    trial_id: str
    index: int
    sweep: str
    teacher: Mapping[str, Any]  # label, arch, source, pretrain | checkpoint | weights, key
    student: str
    loss: Mapping[str, Any]  # name + every parameter (defaults filled)
    train: Mapping[str, Any]  # TrainSpec fields after grid overrides
    dataset: Mapping[str, Any]
    knn: Mapping[str, Any]
    runtime: Mapping[str, Any]  # device, threads, trial_dir, cache_dir (not part of the id)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialConfig:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    @property
    def label(self) -> str:
        """Short human label: the loss shows only the parameters set away from defaults."""
        defaults = param_fields(self.loss["name"])
        changed = ",".join(f"{k}={v}" for k, v in self.loss.items()
                           if k != "name" and _plain(defaults.get(k)) != v)
        loss = self.loss["name"] + (f"({changed})" if changed else "")
        return f"{self.teacher['label']}->{self.student} {loss} seed={self.train['seed']}"


def teacher_payload(t: TeacherSpec, dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher as a trial sees it, with ``key``: the hash its caches are stored under."""
    body: dict[str, Any] = {"label": t.label, "arch": t.arch, "source": t.source}
    if t.pretrain is not None:
        body["pretrain"] = dict(t.pretrain)
    if t.checkpoint is not None:
        body["checkpoint"] = t.checkpoint
    if t.weights is not None:
        body["weights"] = t.weights
    identity = {k: v for k, v in body.items() if k != "label"}
    body["key"] = content_hash({"teacher": identity, "dataset": dataset["name"]}, 16)
    return body


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """Cross the grid axes in a fixed order: pair, loss (and its axes), scalar axes."""
    dataset = dataclasses.asdict(spec.dataset)
    knn = {**dataclasses.asdict(spec.knn), "k": list(spec.knn.k)}
    base_train = {**dataclasses.asdict(spec.train), "milestones": list(spec.train.milestones)}
    scalar_keys = list(spec.grid.scalars)
    scalar_combos = list(itertools.product(*(spec.grid.scalars[k] for k in scalar_keys)))
    trials: list[TrialConfig] = []
    for teacher_label, student in spec.grid.pairs:
        teacher = teacher_payload(spec.teachers[teacher_label], dataset)
        for choice in spec.grid.loss:
            for combo in _product(choice.axes):
                params = dataclasses.asdict(make_params(choice.name, combo))
                loss = {"name": choice.name,
                        **{k.rstrip("_"): _plain(v) for k, v in params.items()}}
                for values in scalar_combos:
                    train = {**base_train, **dict(zip(scalar_keys, values, strict=True))}
                    identity = {"teacher": {k: v for k, v in teacher.items() if k != "label"},
                                "student": student, "loss": loss, "train": train,
                                "dataset": dataset, "knn": knn}
                    trial_id = content_hash(identity)
                    runtime = {
                        "device": spec.resources.device,
                        "threads": spec.resources.threads,
                        "trial_dir": str(spec.output_dir / "trials" / trial_id),
                        "cache_dir": str(spec.cache_dir),
                    }
                    trials.append(TrialConfig(trial_id, len(trials), spec.name, teacher,
                                              student, loss, train, dataset, knn, runtime))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):  # only if two grid points are the same experiment
        raise ValueError("the grid contains the same trial twice")
    return trials


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def flat_params(trial: TrialConfig) -> dict[str, str]:
    """Dotted MLflow params (docs/CONTRACTS.md)."""
    out: dict[str, Any] = {
        "teacher": trial.teacher["label"],
        "teacher.arch": trial.teacher["arch"],
        "teacher.source": trial.teacher["source"],
        "teacher.key": trial.teacher["key"],
        "student": trial.student,
    }
    out.update({f"loss.{k}": v for k, v in trial.loss.items()})
    out.update(trial.train)
    out.update({f"dataset.{k}": v for k, v in trial.dataset.items()})
    out.update({f"knn.{k}": v for k, v in trial.knn.items()})
    out["trial_id"] = trial.trial_id
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in out.items()}


def varying_axes(trials: list[TrialConfig]) -> list[str]:
    """Flattened param keys whose value differs between trials (the sweep's axes)."""
    if not trials:
        return []
    flats = [flat_params(t) for t in trials]
    keys = dict.fromkeys(k for f in flats for k in f if k not in ("trial_id", "teacher.key"))

    def varies(key: str) -> bool:
        if not key.startswith("loss.") or key == "loss.name":
            return len({f.get(key) for f in flats}) > 1
        # An objective's own parameter is an axis only where it varies for that objective:
        # parameters that other objectives lack, or set differently, are not a sweep axis.
        by_objective: dict[str, set[str | None]] = {}
        for f in flats:
            by_objective.setdefault(f["loss.name"], set()).add(f.get(key))
        return any(len(values) > 1 for values in by_objective.values())

    return [k for k in keys if varies(k)]
