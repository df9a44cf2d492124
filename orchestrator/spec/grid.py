"""Grid expansion: a validated spec -> the list of trial configs (pure, deterministic).

A trial's id is a content hash of everything that decides its result, so the same grid point
always maps to the same id (resume and "add trials" rely on this) and two grid points never
share one.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from orchestrator.spec.config import (
    LossConfig,
    RuntimeConfig,
    StudentConfig,
    TrialConfig,
    flat_params,
    trial_identity,
)
from orchestrator.spec.load import SweepSpec

# Grid axes besides teacher/student/pairs/loss, each overriding the train field of its name.
SCALAR_AXES = ("batch_size", "seed", "lr", "epochs", "weight_decay")


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """Cross the grid axes in a fixed order: pair, loss (and its axes), scalar axes."""
    scalar_keys = list(spec.grid.scalars)
    scalar_combos = list(itertools.product(*(spec.grid.scalars[k] for k in scalar_keys)))
    trials: list[TrialConfig] = []
    for teacher_label, student_arch in spec.grid.pairs:
        teacher = spec.teachers[teacher_label]
        student = StudentConfig(student_arch)
        for choice in spec.grid.loss:
            for combo in choice.combos():
                loss = LossConfig.of(choice.name, combo)
                for values in scalar_combos:
                    train = dataclasses.replace(spec.train,
                                                **dict(zip(scalar_keys, values, strict=True)))
                    trial_id = trial_identity(spec.dataset, teacher, student, loss, train,
                                              spec.eval)
                    runtime = RuntimeConfig(
                        device=spec.resources.device,
                        threads=spec.resources.threads,
                        trial_dir=str(spec.output_dir / "trials" / trial_id),
                        cache_dir=str(spec.cache_dir),
                        fuse=spec.resources.fuse,
                        gpu_fraction=spec.resources.gpu,
                    )
                    trials.append(TrialConfig(trial_id, len(trials), spec.name, spec.dataset,
                                              teacher, student, loss, train, spec.eval,
                                              runtime))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):  # only if two grid points are the same experiment
        raise ValueError("the grid contains the same trial twice")
    return trials


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

    return [k for k in keys if varies(k) and not k.startswith("teacher.")]


def trial_dir(trial: TrialConfig) -> Path:
    return Path(trial.runtime.trial_dir)
