"""Sweep overhead: a real sweep (Ray Tune + MLflow) against the same trials' compute run
directly, in one run.

    .venv/bin/python benchmarks/sweep_overhead.py [SPEC] [--output DIR]

SPEC defaults to experiments/quickstart.yaml. The teacher stage runs first, untimed (both
sides then find the teacher cached). Then (a) the sweep: `run_sweep` from the call to its
return -- Ray start, the cached stage, Tune, one MLflow run per trial, the trials; (b) the
same fused groups through the trial engine directly (`run_group`), as many processes at a
time as the sweep runs groups at once. The share of the sweep's wall time that is not
training is 1 - (b) / (a). Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.engine.group import make_groups
from orchestrator.progress import SweepProgress
from orchestrator.runtime.driver import graph_sizes, run_sweep
from orchestrator.spec.config import TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages.teachers import ensure_teacher
from orchestrator.stages.trials import run_group

ROOT = Path(__file__).resolve().parents[1]


def _direct(group: list[dict[str, Any]]) -> float:
    """One group through the engine in this (spawned) process; its seconds."""
    started = time.perf_counter()
    run_group([TrialConfig.from_dict(d) for d in group], lambda _id, _m: None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--output", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    scratch = Path(args.output or tempfile.mkdtemp(prefix="ukd-overhead-"))
    spec = load_spec(args.spec, scratch / "sweep")
    trials = expand(spec)
    for key, trial in {t.teacher.key: t for t in trials}.items():  # untimed: the teacher
        ensure_teacher(trial.teacher, trial.dataset, trial.eval.knn, trial.runtime.cache_dir,
                       trial.runtime.device, tuple(sorted(graph_sizes(trials)[key])))

    started = time.perf_counter()
    outcome = run_sweep(spec, trials, progress=SweepProgress(len(trials),
                                                             spec.eval.headline))
    sweep_s = time.perf_counter() - started
    if outcome.failed or len(outcome.finished) != len(trials):
        raise SystemExit(f"the sweep did not finish every trial: {outcome.failed}")

    direct_spec = load_spec(args.spec, scratch / "direct")
    direct_trials = expand(direct_spec)
    reports = {}
    for key, trial in {t.teacher.key: t for t in direct_trials}.items():
        reports[key] = ensure_teacher(trial.teacher, trial.dataset, trial.eval.knn,
                                      trial.runtime.cache_dir, trial.runtime.device,
                                      tuple(sorted(graph_sizes(direct_trials)[key])))
    groups = make_groups([t.with_report(reports[t.teacher.key]) for t in direct_trials],
                         spec.resources.fuse, spec.resources.max_group)
    at_once = spec.resources.max_concurrent or len(groups)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(min(at_once, len(groups))) as pool:
        group_s = pool.map(_direct, [[t.to_dict() for t in g] for g in groups])
    direct_s = time.perf_counter() - started
    share = 1.0 - direct_s / sweep_s
    if args.output is None:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{spec.name}: {len(trials)} trials in {len(groups)} fused group(s), "
          f"{min(at_once, len(groups))} at a time")
    print(f"  (a) ukd sweep (Ray Tune + MLflow)   {sweep_s:8.1f} s")
    print(f"  (b) the same groups, engine only    {direct_s:8.1f} s   "
          f"(groups: {', '.join(f'{s:.0f}' for s in group_s)} s)")
    print(f"  not training: {100 * share:.1f}% of the sweep's wall time")
    print(json.dumps({"spec": str(Path(args.spec).name), "trials": len(trials),
                      "groups": len(groups), "sweep_s": sweep_s, "direct_s": direct_s,
                      "group_s": group_s, "overhead_share": share}))


if __name__ == "__main__":
    main()
