"""`ukd`: sweep, report, and the registries (losses, models).

Bad input (spec file, YAML key, value, missing data or checkpoint, unwritable output) prints
one line naming the problem and exits with code 2 before anything starts or is written.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common import names as N
from orchestrator.errors import UserInputError

# `kill -USR1 <pid>` writes every thread's stack to stderr: a sweep that seems stuck can be
# looked into without stopping it (the process tests do so before failing on a timeout).
if hasattr(signal, "SIGUSR1"):
    faulthandler.register(signal.SIGUSR1, all_threads=True)

if TYPE_CHECKING:
    from orchestrator.spec.config import TrialConfig
    from orchestrator.spec.load import SweepSpec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Unsupervised knowledge distillation sweeps: YAML grid -> Ray Tune -> "
                       "MLflow -> tables.")
# Wide enough for the trial tables when output goes to a file or CI log.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# Over 60 lines: most of it is the Typer options (the command's signature and its --help).
@app.command()
def sweep(
    spec_file: Annotated[Path, typer.Argument(help="Sweep spec (YAML).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the stages and trials; "
                                          "run nothing.")] = False,
    output: Annotated[Path | None, typer.Option(help="Output directory (default: the spec's "
                                                "output_dir, else runs/<name>).")] = None,
    address: Annotated[str | None, typer.Option(help="Attach to a Ray cluster (else "
                                                "RAY_ADDRESS, else local Ray).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: "
                                                     "SQLite in the output directory).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted sweep "
                                         "(also what a plain re-run does).")] = False,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="Start the Ray dashboard "
                                            "(local Ray only; on 127.0.0.1).")] = False,
) -> None:
    """Run a sweep: stages (teacher pretraining, neighbour graphs), then one Ray Tune trial
    per grid point, each logged to MLflow. Re-running continues an interrupted sweep."""
    from common.names import SWEEP_JSON
    from orchestrator.runtime.driver import run_sweep
    from orchestrator.spec.grid import expand
    from orchestrator.spec.load import load_spec

    try:
        if spec_file.is_dir():
            raise UserInputError(f"{spec_file}: is a directory; expected a sweep spec YAML file")
        spec = load_spec(spec_file, output, require_files=not dry_run)
        try:
            trials = expand(spec)
        except ValueError as exc:  # e.g. two grid points that are the same experiment
            raise UserInputError(f"{spec.source_path} at `grid`: {exc}") from None
        if dry_run:
            _print_plan(spec, trials, address)
            return
        if resume and not (spec.output_dir / SWEEP_JSON).is_file():
            _fail(f"--resume: {spec.output_dir} holds no sweep to resume")
        # Checks (preflight) run once, inside run_sweep, before Ray starts or anything is
        # written; an unreachable cluster is found there too.
        outcome = run_sweep(spec, trials, tracking_uri=tracking_uri, address=address,
                            dashboard=dashboard)
    except UserInputError as exc:
        _fail(_one_line(exc))
    except KeyboardInterrupt:  # Ctrl+C, SIGTERM or SIGHUP before the trials (e.g. a stage)
        err.print("interrupted: the sweep's runs are marked KILLED; run the same command "
                  "again to continue", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    out.print(f"\n[bold]{outcome.total} trials[/bold]: {len(outcome.finished)} finished now, "
              f"{outcome.skipped} already finished, {len(outcome.failed)} failed "
              f"in {outcome.wall_s:.0f}s; output {outcome.output_dir} "
              f"({outcome.disk_bytes / 2**20:.1f} MiB on disk)")
    if outcome.phase_s:  # where the time went: Ray, stages, references, trials
        out.print("  time: " + ", ".join(f"{phase.replace('_', ' ')} {seconds:.0f}s"
                                         for phase, seconds in outcome.phase_s.items()),
                  highlight=False)
    for label, reason in outcome.failed.items():
        out.print(f"  [red]failed[/red] {escape(label)}: {escape(reason)}", highlight=False,
                  soft_wrap=True)
    out.print(f"MLflow: {outcome.tracking_uri} (parent run {outcome.parent_run_id})")
    # The runs view's address: MLflow 3.17 opens an experiment on its GenAI overview
    # otherwise (common/names.py RUNS_VIEW).
    runs = N.RUNS_VIEW.format(experiment_id=outcome.experiment_id)
    server = outcome.tracking_uri.rstrip("/")
    if outcome.tracking_uri.startswith("sqlite:///"):
        out.print(f"Open the UI: mlflow ui --backend-store-uri '{outcome.tracking_uri}' "
                  "--host 127.0.0.1 --port 5000", highlight=False, soft_wrap=True)
        server = "http://127.0.0.1:5000"
    if server.startswith(("http://", "https://")):
        out.print(f"Runs in the UI: {server}/{runs}", highlight=False, soft_wrap=True)
    out.print(f"Report: ukd report {outcome.output_dir}", highlight=False, soft_wrap=True)
    if outcome.interrupted:
        err.print(f"interrupted: {outcome.interrupted} trial(s) unfinished (KILLED); run the "
                  "same command again to continue them", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _print_plan(spec: SweepSpec, trials: list[TrialConfig], address: str | None) -> None:
    from orchestrator.runtime.driver import graph_sizes
    from orchestrator.spec.config import CheckpointSource, PretrainSource, flat_params
    from orchestrator.spec.grid import varying_axes

    sizes = graph_sizes(trials)
    stages = Table(title="stages (before the trials)", show_lines=False)
    for col in ("teacher", "arch", "source", "what", "cache key"):
        stages.add_column(col)
    seen: set[str] = set()
    for t in trials:
        key = t.teacher.key
        if key in seen:
            continue
        seen.add(key)
        source = t.teacher.source
        if isinstance(source, PretrainSource):
            work = f"pretrain {source.pretrain.recipe} ({source.pretrain.epochs} epochs)"
        elif isinstance(source, CheckpointSource):
            work = f"load {source.checkpoint}"
        else:
            work = f"weights {source.weights}"
        work += ", teacher kNN" + (" + linear probe" if spec.eval.linear is not None else "")
        if sizes.get(key):
            work += ", neighbour graph top-" + "/".join(map(str, sorted(sizes[key])))
        stages.add_row(t.teacher.label, source.arch, source.source, work, key)
    _add_reference_rows(stages, spec, trials)
    out.print(stages)
    axes = varying_axes(trials)
    loss_axes = [a.removeprefix("loss.") for a in axes if a.startswith("loss.") and
                 a != "loss.name"]
    other_axes = [a for a in axes if a not in ("teacher", "student") and
                  not a.startswith("loss.")]
    table = Table(title=f"{len(trials)} trials (axes: {', '.join(axes) or 'none'})")
    for col in ("#", "trial id", "teacher", "student", "loss", *other_axes):
        table.add_column(col)
    for t in trials:
        params = t.loss.yaml_params()
        shown = ", ".join(f"{k}={params[k]}" for k in loss_axes if k in params)
        flat = flat_params(t)
        table.add_row(str(t.index), t.trial_id, t.teacher.label, t.student.arch,
                      t.loss.name + (f" ({shown})" if shown else ""),
                      *(flat.get(a, "-") for a in other_axes))
    out.print(table)
    from orchestrator.data.datasets import train_size
    from orchestrator.spec.display import images_per_epoch, student_images

    n = train_size(spec.dataset)
    for line in dict.fromkeys(f"{t.loss.name}: {images_per_epoch(t, n)}" for t in trials):
        out.print(f"epoch of {line}", highlight=False, soft_wrap=True)
    _print_groups(spec, trials, address)
    total = sum(student_images(t, n) for t in trials)
    devices = sorted({t.train.devices for t in trials})
    out.print(f"student-images: {total:,} in all ({len(trials)} trials over N = {n:,} "
              "training images; a fused group decodes and augments each batch once for all "
              "its members)" + (f"; per-device chunks: train.devices {devices[0]}"
                               if devices != [1] else ""), highlight=False, soft_wrap=True)
    for line in _needs(spec, trials):
        out.print(line, highlight=False, soft_wrap=True)
    first = trials[0]
    fixed = {k: v for k, v in first.train.to_dict().items() if k not in other_axes}
    out.print(f"fixed: dataset {first.dataset.name}, train "
              + ", ".join(f"{k}={v}" for k, v in fixed.items()), highlight=False,
              soft_wrap=True)


def _needs(spec: SweepSpec, trials: list[TrialConfig]) -> list[str]:
    """What a real run of the plan reads from disk, and whether it is there now (a dry run
    needs none of it)."""
    from orchestrator.data.datasets import DATASETS
    from orchestrator.spec.config import CheckpointSource

    def state(path: str | None, kind: str) -> str:
        if path is None:
            return "not set"
        there = Path(path).is_dir() if kind == "dir" else Path(path).is_file()
        return f"{path} ({'present' if there else 'MISSING: a real run stops at preflight'})"

    lines = []
    data = spec.dataset
    if DATASETS[data.name].needs_root and not data.download:
        lines.append(f"needs dataset.root: {state(data.root, 'dir')}")
    if data.classes is not None:
        lines.append(f"needs dataset.classes: {state(data.classes, 'file')}")
    if spec.eval.transfer is not None:
        from orchestrator.data.transfer import check_files
        from orchestrator.errors import UserInputError

        for i, item in enumerate(spec.eval.transfer.datasets):
            try:
                check_files(item.name, item.root)
                found = "present"
            except UserInputError:
                found = "MISSING: a real run stops before Ray starts"
            lines.append(f"needs eval.transfer.datasets[{i}].root ({item.name}): "
                         f"{item.root} ({found})")
    for label in dict.fromkeys(t.teacher.label for t in trials):
        source = spec.teachers[label].source
        if isinstance(source, CheckpointSource):
            lines.append(f"needs teachers.{label}.checkpoint: {state(source.checkpoint, 'file')}")
    return lines


def _add_reference_rows(stages: Table, spec: SweepSpec, trials: list[TrialConfig]) -> None:
    """One row per reference kind and student (its seeds in the row), in the stages table."""
    from orchestrator.spec.config import ReferenceConfig
    from orchestrator.stages.references import plan_references

    evaluators = ("kNN" + (" + linear probe" if spec.eval.linear is not None else "")
                  + (" + transfer" if spec.eval.transfer is not None else ""))
    rows: dict[tuple[str, str], list[ReferenceConfig]] = {}
    for ref in plan_references(spec.references, trials):
        rows.setdefault((ref.kind, ref.student), []).append(ref)
    for (kind, student), refs in rows.items():
        recipe = refs[0].recipe
        work = ("untrained" if recipe is None
                else f"train {recipe.recipe} ({recipe.epochs} epochs, no teacher)")
        seeds = ", ".join(str(r.seed) for r in refs)
        keys = refs[0].key + (f" (+{len(refs) - 1} more)" if len(refs) > 1 else "")
        stages.add_row(f"reference {kind}", student, "reference",
                       f"{work}, {evaluators}, seed {seeds}", keys)


def _print_groups(spec: SweepSpec, trials: list[TrialConfig], address: str | None) -> None:
    """How the trials run: fused groups (one batch stream and teacher pass each), and how
    many run at once on the cluster's resources (this machine without --address)."""
    from orchestrator.engine.group import make_groups
    from orchestrator.runtime.gpu import concurrency_line
    from orchestrator.runtime.ray_runtime import cluster_nodes

    res = spec.resources
    groups = make_groups(trials, res.fuse, res.max_group)
    level = {"auto": "auto: stacked per student architecture on CUDA, members of a group "
                     "on CPU", "stack": "stacked per student architecture",
             "group": "members of a group", "off": "each trial alone"}[res.fuse]
    table = Table(title=f"{len(groups)} Ray Tune trial(s) for {len(trials)} trials "
                        f"(resources.fuse: {res.fuse} -- {level}; at most {res.max_group} "
                        "a group)")
    for col in ("group", "trials (#)", "students", "objectives"):
        table.add_column(col)
    for i, group in enumerate(groups):
        table.add_row(str(i), " ".join(str(t.index) for t in group),
                      ", ".join(dict.fromkeys(t.student.arch for t in group)),
                      ", ".join(dict.fromkeys(t.loss.name for t in group)))
    out.print(table)
    out.print(concurrency_line(spec, len(groups), nodes=cluster_nodes(address)),
              highlight=False, soft_wrap=True)


@app.command()
def report(
    sweep_ref: Annotated[str, typer.Argument(metavar="SWEEP", help="Sweep output directory, "
                                             "or a parent run id / experiment name with "
                                             "--tracking-uri.")],
    metric: Annotated[str, typer.Option(help="Metric of the table cells.")] = "knn/top1_k10",
    axis: Annotated[list[str] | None, typer.Option(help="Ablation axis (repeatable); default "
                                                   "every axis that varies.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write (default "
                                                 "SWEEP/report).")] = None,
    best: Annotated[bool, typer.Option("--best", help="Table cells: each trial's best "
                                       "periodic evaluation (<metric>_best, needs eval.every "
                                       "> 0; chosen on the test set) instead of its last "
                                       "epoch.")] = False,
) -> None:
    """Comparison table and ablation reports from the sweep's MLflow runs."""
    from orchestrator.tracking import log_report
    from reports import ReportError, build_report, resolve_sweep

    try:
        result = build_report(sweep_ref, out_dir=out_dir, tracking_uri=tracking_uri,
                              metric=metric, axes=axis, best_epoch=best)
        ref = resolve_sweep(sweep_ref, tracking_uri)
    except (ReportError, UserInputError) as exc:
        _fail(str(exc))
    # The parent's report/ artifacts; a report written elsewhere (--out, e.g. another
    # metric) goes beside it under its folder's name instead of replacing it.
    folder = "report" if out_dir is None else result.out_dir.name
    log_report(ref.tracking_uri, ref.parent_run_id, result.out_dir, folder)
    out.print(result.comparison_markdown, highlight=False, soft_wrap=True)
    out.print(f"\nwritten to {result.out_dir} (and to MLflow: parent run {ref.parent_run_id}, "
              f"artifacts {folder}/):", highlight=False, soft_wrap=True)
    for path in result.paths:
        out.print(f"  {path}", highlight=False, soft_wrap=True)


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a sweep spec (editors: yaml-language-server)."""
    import json

    from orchestrator.spec.models import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command("losses")
def list_losses() -> None:
    """The registered objectives, their parameters and defaults."""
    from losses import OBJECTIVES, param_fields

    table = Table()
    for col in ("objective", "parameters (defaults)", "needs", "what"):
        table.add_column(col)
    for name in sorted(OBJECTIVES):
        cls = OBJECTIVES[name]
        defaults = param_fields(name)
        req = cls.requirements(cls.Params())
        needs = [k for k in ("labels", "teacher_classifier", "teacher_embedding",
                             "neighbour_batches", "neighbour_graph") if getattr(req, k)]
        if req.num_views > 1:
            needs.append(f"{req.num_views} views")
        table.add_row(name, ", ".join(f"{k}={_short(v)}" for k, v in defaults.items()),
                      ", ".join(needs) or "-", cls.summary)
    out.print(table)


def _short(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@app.command("models")
def list_models() -> None:
    """The registered backbones with their feature dimension."""
    from models import MODELS

    table = Table()
    for col in ("model", "family", "feature dim", "what"):
        table.add_column(col)
    for name in sorted(MODELS, key=str.lower):
        spec = MODELS[name]
        table.add_row(name, spec.family, str(spec.feature_dim), spec.description)
    out.print(table)


data_app = typer.Typer(no_args_is_help=True, help="Image folders: check before a sweep.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    folder: Annotated[Path, typer.Argument(help="an image folder: train/<class>/*, val/<class>/*")],
    workers: Annotated[int | None, typer.Option(min=0, help="decode processes (0: this one; "
                                                            "default: one per CPU)")] = None,
    imagenet: Annotated[bool, typer.Option(help="also check the 1,000 ImageNet wnid "
                                                "folders")] = False,
) -> None:
    """Check an image folder's layout, then decode every image (in parallel, with a progress
    bar) and list the ones that cannot be read: exit 1 when there are any."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from orchestrator.data.folders import check_files, check_layout

    try:
        check_layout(folder, imagenet=imagenet)
    except UserInputError as exc:
        _fail(str(exc))
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("decoding", total=None)
        result = check_files(folder, workers, lambda n: bar.advance(task, n))
    for path, reason in result.unreadable:
        out.print(f"unreadable: {escape(path)} ({escape(reason)})", highlight=False,
                  soft_wrap=True)
    out.print(f"{result.files} images, {len(result.unreadable)} unreadable", highlight=False)
    if result.unreadable:
        raise typer.Exit(1)
