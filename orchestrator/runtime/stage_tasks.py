"""Stages as Ray tasks: the helpers every stage uses, and the reference stages that run
beside the trials.

The reference stages (orchestrator/stages/references.py: the teachers' linear probes and the
spec's reference rows) feed no trial: a trial's run only shows its teacher's probe metrics.
So they do not hold the trials back: they are submitted, the trials start at once -- a trial
actor's start-up (a new process that imports torch and the engine, seconds on a small
machine) overlaps them -- and the driver logs each reference as it ends
(:meth:`ReferenceTasks.poll`, from the Tune callback between Tune's steps), and the teachers'
probe metrics into their trials' runs at step 0 whenever they arrive.

They reserve no CPU of Ray's (``num_cpus=0``; their threads stay ``stage_cpu``): with it, Ray
would run them first and start no trial until they were done. They keep the stages' GPU
share and custom resources.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import Any

from rich.markup import escape

from orchestrator.progress import SweepProgress
from orchestrator.runtime.gpu import in_gpu_share
from orchestrator.spec.config import ReferenceConfig, ReferenceReport, TeacherReport, TrialConfig
from orchestrator.spec.load import SweepSpec
from orchestrator.tracking import Tracker


def wait_for(future: Any) -> Any:
    """``ray.get`` that returns to Python every second while it waits, so that a stop
    signal's handler runs within a second whatever Ray's own check of signals does (a
    SIGTERM in the teacher stage once went unanswered for minutes: test_signals.py)."""
    import ray

    while not ray.wait([future], timeout=1.0)[0]:
        pass
    return ray.get(future)


def stage_task(spec: SweepSpec, fn: Callable[..., Any], cpus: float | None = None) -> Any:
    """``fn`` as a Ray task with the stages' resources (``stage_cpu`` unless ``cpus``, the
    trials' gpu share and custom resources), its CUDA memory capped at that share. Any: Ray's
    stubs type remote functions of at most a few positional parameters."""
    import ray

    res = spec.resources
    return ray.remote(num_cpus=res.stage_cpu if cpus is None else cpus, num_gpus=res.gpu,
                      resources=dict(res.custom))(in_gpu_share(fn, res.gpu, res.device))


def cached_or_task(cached: Any, task: Any, *args: Any) -> Any:
    """A stage's result as a Ray object: what its cache already holds (``cached``, read in
    the driver: no worker process that imports torch to read a few files), else the task."""
    import ray

    return task.remote(*args) if cached is None else ray.put(cached)


def stage_threads(spec: SweepSpec) -> int:
    return max(1, math.ceil(spec.resources.stage_cpu))


def failure_text(exc: BaseException) -> str:
    """A failed Ray task's own exception (Ray wraps it), as ``Type: message``."""
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}"


def short(reason: str, limit: int = 300) -> str:
    """A failure reason on one line, for the terminal (MLflow and failure.json keep it all)."""
    text = " ".join(reason.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ReferenceTasks:
    """The reference stages of a sweep as Ray tasks (cached ones read in the driver), at
    most as many at a time as the cluster's CPUs hold ``stage_cpu`` (without a CPU
    reservation Ray would start a worker process per task); :meth:`poll` logs those that
    have ended and submits the next, :meth:`wait` does so until none is left.

    ``reports`` holds each teacher's stage report with its probe metrics added once they
    arrive; :meth:`poll` returns the teachers whose metrics arrived in that call."""

    def __init__(self, spec: SweepSpec, trials: list[TrialConfig],
                 reports: dict[str, TeacherReport], tracker: Tracker, view: SweepProgress
                 ) -> None:
        import ray

        from orchestrator.stages.references import (
            cached_reference,
            cached_teacher_metrics,
            ensure_reference,
            ensure_teacher_metrics,
            plan_references,
        )

        self.spec, self.tracker, self.view = spec, tracker, view
        self.reports = dict(reports)
        self._arrived: list[str] = []
        self._running: dict[Any, Callable[[Any], None]] = {}  # future -> what logs it
        self._waiting: list[tuple[Callable[[], Any], Callable[[Any], None]]] = []
        planned = plan_references(spec.references, trials)
        probes = spec.eval.linear is not None or spec.eval.transfer is not None
        threads, cache, device = stage_threads(spec), str(spec.cache_dir), spec.resources.device
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self._at_once = max(1, int(cpus // max(spec.resources.stage_cpu, 1e-9)))
        first = {t.teacher.key: t for t in trials}
        teacher_task = stage_task(spec, ensure_teacher_metrics, cpus=0)
        for key in [k for k in reports if probes and k in first]:
            t = first[key]
            self._add(cached_teacher_metrics(t.teacher, spec.eval, cache),
                      partial(teacher_task.remote, t.teacher, t.dataset, spec.eval, cache,
                              device, threads),
                      partial(self._teacher_probe, key))
        if planned:
            logged = tracker.logged_references()
            todo = [r for r in planned if r.run_key not in logged]
            view.console.print(f"[bold]references[/bold]: {len(planned)} run(s) "
                               f"({', '.join(dict.fromkeys(r.kind for r in planned))}; "
                               f"{len(planned) - len(todo)} already logged), beside the "
                               "trials", highlight=False)
            reference_task = stage_task(spec, ensure_reference, cpus=0)
            for ref in todo:
                self._add(cached_reference(ref, cache),
                          partial(reference_task.remote, ref, cache, device, threads),
                          partial(self._reference, ref))
        self._submit()

    def _add(self, cached: Any, submit: Callable[[], Any],
             done: Callable[[Any], None]) -> None:
        import ray

        if cached is not None:  # read in the driver: no task, no worker process
            self._running[ray.put(cached)] = done
        else:
            self._waiting.append((submit, done))

    def _submit(self) -> None:
        while self._waiting and len(self._running) < self._at_once:
            submit, done = self._waiting.pop(0)
            self._running[submit()] = done

    @property
    def pending(self) -> int:
        return len(self._running) + len(self._waiting)

    def poll(self, timeout: float = 0.0) -> list[str]:
        """Log what has ended (waiting up to ``timeout`` seconds for the first) and submit
        what may start; the keys of the teachers whose probe metrics arrived."""
        import ray

        if self._running:
            futures = list(self._running)
            for future in ray.wait(futures, num_returns=len(futures), timeout=timeout)[0]:
                self._running.pop(future)(future)
            self._submit()
        arrived, self._arrived = self._arrived, []
        return arrived

    def wait(self) -> list[str]:
        """Log every reference still to come, as each ends (a stop signal is answered within
        a second); the keys of the teachers whose probe metrics arrived."""
        arrived: list[str] = []
        while self.pending:
            arrived += self.poll(timeout=1.0)
        return arrived

    def _teacher_probe(self, key: str, future: Any) -> None:
        import ray

        report = self.reports[key]
        try:
            metrics: dict[str, float] = ray.get(future)
        except Exception as exc:  # the trials log no teacher linear probe, they go on
            self.view.console.print(f"  teacher {report.label} probes: [red]failed[/red] "
                                    f"({escape(short(failure_text(exc)))})",
                                    highlight=False, soft_wrap=True)
            return
        self.reports[key] = dataclasses.replace(report, metrics={**report.metrics, **metrics})
        self._arrived.append(key)
        shown = ", ".join(f"{k} {v:.2f}%" for k, v in metrics.items() if "top1" in k)
        self.view.console.print(f"  teacher {report.label}: {shown}", highlight=False,
                                soft_wrap=True)

    def _reference(self, ref: ReferenceConfig, future: Any) -> None:
        import ray

        try:
            result: ReferenceReport = ray.get(future)
        except Exception as exc:  # logged FAILED; the trials go on
            reason = f"reference stage failed: {failure_text(exc)}"[:2000]
            self.tracker.log_reference(ref, None, reason)
            self.view.console.print(f"  {ref.label}: [red]failed[/red] "
                                    f"({escape(short(reason))})", highlight=False,
                                    soft_wrap=True)
            return
        self.tracker.log_reference(ref, result)
        state = ("untrained" if ref.kind == "random_init" else
                 f"trained ({result.train_time_s:.0f}s)" if result.trained_now else "cached")
        shown = ", ".join(f"{k} {v:.2f}%" for k, v in result.metrics.items()
                          if k == self.spec.eval.headline or k.endswith("/top1"))
        self.view.console.print(f"  {ref.label}: {state}, {shown}", highlight=False,
                                soft_wrap=True)
