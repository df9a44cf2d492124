"""Sweep overhead: a real sweep (Ray Tune + MLflow) against the same trials' compute run
directly, in one run.

    .venv/bin/python benchmarks/sweep_overhead.py [SPEC] [--output DIR]

SPEC defaults to experiments/quickstart.yaml. The teacher stage runs first, untimed, and each
side gets its own copy of the cached teacher (its pretraining, kNN and graphs; not its linear
probe) in a scratch cache. Then (a) the sweep: `run_sweep` from the call to its return --
Ray start, the cached stage, the reference stages (the teacher's probe, the reference rows),
Tune, one MLflow run per trial, the trials; (b) the same work through the engine directly:
the reference stages one after another in this process (as the sweep's stage_cpu allows on
this machine), then the same fused groups (`run_group`), as many processes at a time as the
sweep runs groups at once. The share of the sweep's wall time that is not this work is
1 - (b) / (a). Prints a table, the sweep's phases, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.engine.group import make_groups
from orchestrator.progress import SweepProgress
from orchestrator.runtime.driver import graph_sizes, run_sweep
from orchestrator.spec.config import TeacherConfig, TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import SweepSpec, load_spec
from orchestrator.stages.references import (
    ensure_reference,
    ensure_teacher_metrics,
    plan_references,
)
from orchestrator.stages.teachers import ensure_teacher, teacher_dir
from orchestrator.stages.trials import run_group

ROOT = Path(__file__).resolve().parents[1]


def _direct(group: list[dict[str, Any]]) -> float:
    """One group through the engine in this (spawned) process; its seconds."""
    started = time.perf_counter()
    run_group([TrialConfig.from_dict(d) for d in group], lambda _id, _m: None)
    return time.perf_counter() - started


def _with_teacher(spec: SweepSpec, cache: Path) -> SweepSpec:
    """``spec`` with its own scratch cache holding a copy of each cached teacher (weights,
    kNN, graphs), without the teacher's linear probe: the sweep computes that."""
    for key in {t.teacher.key for t in expand(spec)}:
        shutil.copytree(teacher_dir(spec.cache_dir, key), teacher_dir(cache, key),
                        ignore=shutil.ignore_patterns("linear-*.json"), dirs_exist_ok=True)
    return dataclasses.replace(spec, cache_dir=cache)


def _reference_job(job: tuple[Any, ...]) -> None:
    """One reference stage in this (spawned) process: the teacher's probe or a reference."""
    if isinstance(job[0], TeacherConfig):
        ensure_teacher_metrics(*job)
    else:
        ensure_reference(*job)


def _references_direct(spec: SweepSpec, trials: list[TrialConfig]) -> float:
    """The sweep's reference stages through the engine, as many at a time as the sweep's
    local Ray runs them (its CPUs / stage_cpu); their seconds."""
    threads = max(1, int(spec.resources.stage_cpu))
    where = (str(spec.cache_dir), spec.resources.device, threads)
    jobs: list[tuple[Any, ...]] = []
    if spec.eval.linear is not None:
        jobs += [(t.teacher, t.dataset, spec.eval, *where)
                 for t in {t.teacher.key: t for t in trials}.values()]
    jobs += [(r, *where) for r in plan_references(spec.references, trials)]
    at_once = max(1, int((os.cpu_count() or 1) // max(spec.resources.stage_cpu, 1e-9)))
    started = time.perf_counter()
    if jobs:
        with multiprocessing.get_context("spawn").Pool(min(at_once, len(jobs))) as pool:
            pool.map(_reference_job, jobs)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--output", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    scratch = Path(args.output or tempfile.mkdtemp(prefix="ukd-overhead-"))
    base = load_spec(args.spec, scratch / "sweep")
    for key, trial in {t.teacher.key: t for t in expand(base)}.items():  # untimed
        ensure_teacher(trial.teacher, trial.dataset, trial.eval.knn, trial.runtime.cache_dir,
                       trial.runtime.device, tuple(sorted(graph_sizes(expand(base))[key])))

    spec = _with_teacher(base, scratch / "cache-sweep")
    trials = expand(spec)
    started = time.perf_counter()
    outcome = run_sweep(spec, trials, progress=SweepProgress(len(trials),
                                                             spec.eval.headline))
    sweep_s = time.perf_counter() - started
    if outcome.failed or len(outcome.finished) != len(trials):
        raise SystemExit(f"the sweep did not finish every trial: {outcome.failed}")

    direct_spec = _with_teacher(load_spec(args.spec, scratch / "direct"), scratch / "cache-direct")
    direct_trials = expand(direct_spec)
    reports = {}
    for key, trial in {t.teacher.key: t for t in direct_trials}.items():  # cached: reads
        reports[key] = ensure_teacher(trial.teacher, trial.dataset, trial.eval.knn,
                                      trial.runtime.cache_dir, trial.runtime.device,
                                      tuple(sorted(graph_sizes(direct_trials)[key])))
    groups = make_groups([t.with_report(reports[t.teacher.key]) for t in direct_trials],
                         spec.resources.fuse, spec.resources.max_group)
    at_once = spec.resources.max_concurrent or len(groups)
    started = time.perf_counter()
    references_s = _references_direct(direct_spec, direct_trials)
    with multiprocessing.get_context("spawn").Pool(min(at_once, len(groups))) as pool:
        group_s = pool.map(_direct, [[t.to_dict() for t in g] for g in groups])
    direct_s = time.perf_counter() - started
    share = 1.0 - direct_s / sweep_s
    if args.output is None:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{spec.name}: {len(trials)} trials in {len(groups)} fused group(s), "
          f"{min(at_once, len(groups))} at a time")
    print(f"  (a) ukd sweep (Ray Tune + MLflow)   {sweep_s:8.1f} s   (phases: "
          + ", ".join(f"{k} {v:.1f}" for k, v in outcome.phase_s.items()) + " s)")
    print(f"  (b) the same work, engine only      {direct_s:8.1f} s   (references "
          f"{references_s:.1f} s; groups: {', '.join(f'{s:.0f}' for s in group_s)} s)")
    print(f"  not training or evaluating: {100 * share:.1f}% of the sweep's wall time")
    print(json.dumps({"spec": str(Path(args.spec).name), "trials": len(trials),
                      "groups": len(groups), "sweep_s": sweep_s, "direct_s": direct_s,
                      "references_s": references_s, "group_s": group_s,
                      "phase_s": outcome.phase_s, "overhead_share": share}))


if __name__ == "__main__":
    main()
