"""Sweep overhead: a real sweep (Ray Tune + MLflow) against the same trials' compute run
directly, in one run.

    .venv/bin/python benchmarks/sweep_overhead.py [SPEC] [--output DIR] [--repeat N]

SPEC defaults to experiments/quickstart.yaml. The teacher stage runs first, untimed, and each
side gets its own copy of the cached teacher (its pretraining, kNN and graphs; not its linear
probe) in a scratch cache. Then (a) the sweep: `run_sweep` from the call to its return --
Ray start, the cached stage, the reference stages (the teacher's probe, the reference rows),
Tune, one MLflow run per trial, the trials; (b) the same work through the engine directly:
the reference stages one after another in this process (as the sweep's stage_cpu allows on
this machine), then the same fused groups (`run_group`), as many processes at a time as the
sweep runs groups at once. The share of the sweep's wall time that is not this work is
1 - (b) / (a). With --repeat N the pair runs N times, (a) then (b), and the median share
counts. Prints a table, the sweep's phases, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.engine.group import make_groups
from orchestrator.spec.config import TeacherConfig, TeacherReport, TrialConfig
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


def _ensure_teachers(trials: list[TrialConfig]) -> dict[str, TeacherReport]:
    """Each teacher of ``trials`` trained (or read from the cache) with the neighbour graphs
    its trials need; its report by teacher key."""
    from orchestrator.runtime.driver import graph_sizes

    sizes = graph_sizes(trials)
    return {key: ensure_teacher(t.teacher, t.dataset, t.eval.knn, t.runtime.cache_dir,
                                t.runtime.device, tuple(sorted(sizes[key])))
            for key, t in {t.teacher.key: t for t in trials}.items()}


def _sweep_side(args: argparse.Namespace, scratch: Path) -> tuple[float, dict[str, float]]:
    """(a): ``run_sweep`` on its own copy of the cached teacher; its seconds and phases."""
    # Imported here, not at the top: (b)'s spawned processes import this module, and a
    # script that runs the engine directly imports neither Ray nor MLflow.
    from orchestrator.progress import SweepProgress
    from orchestrator.runtime.driver import run_sweep

    spec = _with_teacher(load_spec(args.spec, scratch / "sweep"), scratch / "cache-sweep")
    trials = expand(spec)
    started = time.perf_counter()
    outcome = run_sweep(spec, trials, progress=SweepProgress(len(trials),
                                                             spec.eval.headline))
    sweep_s = time.perf_counter() - started
    if outcome.failed or len(outcome.finished) != len(trials):
        raise SystemExit(f"the sweep did not finish every trial: {outcome.failed}")
    return sweep_s, dict(outcome.phase_s)


def _direct_side(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """(b): the reference stages, then the fused groups, through the engine directly."""
    spec = _with_teacher(load_spec(args.spec, scratch / "direct"), scratch / "cache-direct")
    trials = expand(spec)
    reports = _ensure_teachers(trials)  # cached: reads
    groups = make_groups([t.with_report(reports[t.teacher.key]) for t in trials],
                         spec.resources.fuse, spec.resources.max_group)
    at_once = min(spec.resources.max_concurrent or len(groups), len(groups))
    started = time.perf_counter()
    references_s = _references_direct(spec, trials)
    with multiprocessing.get_context("spawn").Pool(at_once) as pool:
        group_s = pool.map(_direct, [[t.to_dict() for t in g] for g in groups])
    return {"direct_s": time.perf_counter() - started, "references_s": references_s,
            "group_s": group_s, "groups": len(groups), "at_once": at_once,
            "trials": len(trials), "name": spec.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--output", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="pairs (a), (b) run one after the other; the median share counts "
                             "(a shared or throttled machine moves one pair by several points)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    root = Path(args.output or tempfile.mkdtemp(prefix="ukd-overhead-"))
    base = load_spec(args.spec, root / "base")
    _ensure_teachers(expand(base))  # untimed

    pairs = []
    for r in range(args.repeat):
        scratch = root / f"pair-{r}"
        sweep_s, phases = _sweep_side(args, scratch)
        direct = _direct_side(args, scratch)
        pairs.append({"sweep_s": sweep_s, "phase_s": phases, **direct,
                      "overhead_share": 1.0 - direct["direct_s"] / sweep_s})
        print(f"  pair {r + 1}/{args.repeat}: sweep {sweep_s:.1f} s, engine only "
              f"{direct['direct_s']:.1f} s, overhead {100 * pairs[-1]['overhead_share']:.1f}%",
              flush=True)
    if args.output is None:
        shutil.rmtree(root, ignore_errors=True)

    shares = sorted(p["overhead_share"] for p in pairs)
    median = statistics.median(shares)
    first = pairs[0]
    print(f"\n{first['name']}: {first['trials']} trials in {first['groups']} fused group(s), "
          f"{first['at_once']} at a time; {len(pairs)} pair(s)")
    for i, p in enumerate(pairs, 1):
        print(f"  [{i}] (a) ukd sweep (Ray Tune + MLflow)   {p['sweep_s']:8.1f} s   (phases: "
              + ", ".join(f"{k} {v:.1f}" for k, v in p["phase_s"].items()) + " s)")
        print(f"      (b) the same work, engine only      {p['direct_s']:8.1f} s   (references "
              f"{p['references_s']:.1f} s; groups: "
              f"{', '.join(f'{s:.0f}' for s in p['group_s'])} s)")
    print(f"  not training or evaluating: {100 * median:.1f}% of the sweep's wall time "
          f"(median; min {100 * shares[0]:.1f}%, max {100 * shares[-1]:.1f}%)")
    print(json.dumps({"spec": str(Path(args.spec).name), "trials": first["trials"],
                      "groups": first["groups"], "pairs": [
                          {k: p[k] for k in ("sweep_s", "direct_s", "references_s", "group_s",
                                             "phase_s", "overhead_share")} for p in pairs],
                      "overhead_share_min": shares[0], "overhead_share_max": shares[-1],
                      "overhead_share": median}))


if __name__ == "__main__":
    main()
