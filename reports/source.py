"""Resolve a sweep and load its runs from MLflow.

MLflow is the only data source of ``reports`` (docs/CONTRACTS.md, "MLflow schema"); every read
goes through :class:`mlflow.MlflowClient`. Ray's result files are never read.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from common import names
from common.names import (
    DEFAULT_DB,
    EXPERIMENT_PREFIX,
    KIND_SWEEP,
    KIND_TRIAL,
    SPEC_ARTIFACT,
    SWEEP_JSON,
    TAG_AXES,
    TAG_KIND,
    TAG_OUTPUT_DIR,
    TAG_PARENT,
    TAG_SWEEP_ID,
    TRIALS_ARTIFACT,
)

_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SQLITE_PREFIX = "sqlite:///"


class ReportError(ValueError):
    """A sweep cannot be resolved or reported; the message says why and what to pass instead."""


@dataclass(frozen=True)
class SweepRef:
    """Where a sweep lives: tracking store, experiment and parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    output_dir: Path | None = None
    """Sweep output directory (the report goes to ``<output_dir>/report`` by default)."""


@dataclass
class SweepData:
    """Everything ``reports`` needs about one sweep, read from MLflow."""

    ref: SweepRef
    name: str
    sweep_id: str | None
    runs: pd.DataFrame
    """One row per child trial run (any status); see :func:`runs_to_frame` for the columns."""
    axes: list[str] | None
    """The parent run's ``ukd.axes`` tag (None when absent or unreadable)."""
    spec_text: str | None = None
    trials_text: str | None = None
    expected_trials: list[dict[str, str]] | None = None
    """``trials.yaml`` parsed into flattened (dotted-key) trial configs, when it could be."""
    parent_tags: dict[str, str] = field(default_factory=dict)


def resolve_sweep(sweep: str | Path, tracking_uri: str | None = None) -> SweepRef:
    """Resolve SWEEP into a :class:`SweepRef`.

    ``sweep`` is a sweep output directory (holding ``sweep.json``; the store defaults to
    ``sqlite:///<abs dir>/mlflow.db``) or, with ``tracking_uri``, a parent run id or an
    experiment name (``ukd/<name>`` or ``<name>``: the newest parent run tagged
    ``ukd.kind=sweep`` is used).
    """
    text = str(sweep)
    path = Path(text).expanduser()
    if path.is_file() and path.name == SWEEP_JSON:
        path = path.parent
    if path.is_dir():
        return _resolve_dir(path, tracking_uri)
    if tracking_uri is None:
        if path.exists():
            raise ReportError(f"{text!r} is a file, not a sweep output directory")
        raise ReportError(
            f"sweep directory not found: {path}. To name a parent run id or an experiment "
            "instead, also pass a tracking URI (--tracking-uri)."
        )
    return _resolve_in_store(text, tracking_uri)


def _resolve_dir(directory: Path, tracking_uri: str | None) -> SweepRef:
    directory = directory.resolve()
    sweep_json = directory / SWEEP_JSON
    if not sweep_json.is_file():
        raise ReportError(f"no {SWEEP_JSON} in {directory}: not a ukd sweep output directory")
    try:
        info = json.loads(sweep_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read {sweep_json}: {exc}") from exc
    if not isinstance(info, dict):
        raise ReportError(f"{sweep_json} does not hold a JSON object")

    default_uri = f"{_SQLITE_PREFIX}{directory / DEFAULT_DB}"
    uri = tracking_uri or str(info.get("tracking_uri") or "") or default_uri
    if tracking_uri is None and uri != default_uri and _missing_sqlite_file(uri) is not None:
        # The directory was moved or copied: its own store is the one to read.
        if _missing_sqlite_file(default_uri) is None:
            uri = default_uri
    _require_sqlite_file(uri)
    client = MlflowClient(tracking_uri=uri)

    parent_id = info.get("parent_run_id")
    if parent_id:
        run = _get_run(client, str(parent_id), uri)
        _require_sweep_run(run)
        return SweepRef(uri, run.info.experiment_id, run.info.run_id, directory)

    experiment_id = info.get("experiment_id")
    if experiment_id:
        run = _newest_sweep_run(client, str(experiment_id), uri)
        return SweepRef(uri, run.info.experiment_id, run.info.run_id, directory)
    name = info.get("name")
    if name:
        ref = _resolve_experiment_name(client, str(name), uri)
        if ref is not None:
            return SweepRef(ref.tracking_uri, ref.experiment_id, ref.parent_run_id, directory)
    raise ReportError(
        f"{sweep_json} names no parent run: expected a 'parent_run_id' (or 'experiment_id')"
    )


def _resolve_in_store(sweep: str, tracking_uri: str) -> SweepRef:
    _require_sqlite_file(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    if _RUN_ID_RE.match(sweep):
        try:
            run = client.get_run(sweep)
        except MlflowException:
            run = None
        if run is not None:
            _require_sweep_run(run)
            return SweepRef(
                tracking_uri, run.info.experiment_id, run.info.run_id, _output_dir_tag(run)
            )
    ref = _resolve_experiment_name(client, sweep, tracking_uri)
    if ref is not None:
        return ref
    raise ReportError(
        f"unknown sweep {sweep!r} in tracking store {tracking_uri}: neither a run id nor an "
        f"experiment name ({EXPERIMENT_PREFIX}<name> or <name>)"
    )


def _resolve_experiment_name(client: MlflowClient, name: str, uri: str) -> SweepRef | None:
    candidates = [name] if name.startswith(EXPERIMENT_PREFIX) else [EXPERIMENT_PREFIX + name, name]
    for candidate in candidates:
        experiment = client.get_experiment_by_name(candidate)
        if experiment is None:
            continue
        run = _newest_sweep_run(client, experiment.experiment_id, uri)
        return SweepRef(uri, experiment.experiment_id, run.info.run_id, _output_dir_tag(run))
    return None


def _newest_sweep_run(client: MlflowClient, experiment_id: str, uri: str) -> Run:
    try:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_KIND}` = '{KIND_SWEEP}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    except MlflowException as exc:
        raise ReportError(f"cannot search experiment {experiment_id} in {uri}: {exc}") from exc
    if not runs:
        raise ReportError(
            f"experiment {experiment_id} in {uri} has no sweep parent run "
            f"(tag {TAG_KIND}={KIND_SWEEP})"
        )
    return runs[0]


def _get_run(client: MlflowClient, run_id: str, uri: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise ReportError(f"unknown run {run_id!r} in tracking store {uri}") from exc


def _require_sweep_run(run: Run) -> None:
    kind = run.data.tags.get(TAG_KIND)
    if kind != KIND_SWEEP:
        hint = ""
        parent = run.data.tags.get(TAG_PARENT)
        if parent:
            hint = f"; its parent run is {parent}"
        raise ReportError(
            f"run {run.info.run_id} is not a sweep parent run "
            f"(tag {TAG_KIND}={kind!r}, expected {KIND_SWEEP!r}){hint}"
        )


def _output_dir_tag(run: Run) -> Path | None:
    value = run.data.tags.get(TAG_OUTPUT_DIR)
    return Path(value) if value else None


def _missing_sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI when it does not exist, else None."""
    if not uri.startswith(_SQLITE_PREFIX):
        return None
    raw = uri[len(_SQLITE_PREFIX) :].split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    path = Path(raw)
    return None if path.exists() else path


def _require_sqlite_file(uri: str) -> None:
    # MlflowClient would silently create an empty store for a missing SQLite file.
    missing = _missing_sqlite_file(uri)
    if missing is not None:
        raise ReportError(f"tracking store not found: {missing} (tracking URI {uri})")


# --------------------------------------------------------------------------- loading


def load_sweep(ref: SweepRef, page_size: int = 1000) -> SweepData:
    """Read the parent run, its child trial runs (any status) and its artifacts."""
    client = MlflowClient(tracking_uri=ref.tracking_uri)
    parent = _get_run(client, ref.parent_run_id, ref.tracking_uri)
    tags = dict(parent.data.tags)
    runs = list(iter_child_runs(client, ref.experiment_id, ref.parent_run_id, page_size))
    spec_text = read_artifact_text(client, ref.parent_run_id, SPEC_ARTIFACT)
    trials_text = read_artifact_text(client, ref.parent_run_id, TRIALS_ARTIFACT)
    try:
        experiment_name = client.get_experiment(ref.experiment_id).name
    except MlflowException:
        experiment_name = ref.experiment_id
    name = experiment_name.removeprefix(EXPERIMENT_PREFIX)
    return SweepData(
        ref=ref,
        name=name,
        sweep_id=tags.get(TAG_SWEEP_ID),
        runs=runs_to_frame(runs),
        axes=parse_axes(tags.get(TAG_AXES)),
        spec_text=spec_text,
        trials_text=trials_text,
        expected_trials=parse_trials_yaml(trials_text) if trials_text is not None else None,
        parent_tags=tags,
    )


def iter_child_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str, page_size: int = 1000,
    kind: str = KIND_TRIAL,
) -> Iterator[Run]:
    """Child runs of a parent run with ``ukd.kind = kind``, every status, following
    ``page_token``."""
    filter_string = f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_KIND}` = '{kind}'"
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=page_size,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


REFERENCE_COLUMN = "reference"
"""Column of :func:`load_references`' frame: the run's ``ukd.reference`` tag."""

History = list[tuple[int, float]]
"""A metric's history: ``(step, value)`` pairs in step order, one value per step."""


def load_references(ref: SweepRef, page_size: int = 1000) -> pd.DataFrame:
    """The sweep's reference runs as a runs frame (see :func:`runs_to_frame`).

    Reference rows (random_init, ssl_only, supervised_only) are children of the parent run
    tagged ``ukd.kind=reference``, ``ukd.reference`` (which row) and ``ukd.student`` (the
    student architecture they apply to), with param ``seed`` and the trials' metric names.
    The frame has the base columns (``student`` from the tag, ``seed`` from the param), the
    column ``reference`` (the ``ukd.reference`` tag, None when absent) and the usual
    ``tags.*`` / ``params.*`` / ``metrics.*`` columns; it is empty when there are none.
    """
    client = MlflowClient(tracking_uri=ref.tracking_uri)
    try:
        runs = list(iter_child_runs(client, ref.experiment_id, ref.parent_run_id, page_size,
                                    names.KIND_REFERENCE))
    except MlflowException as exc:
        raise ReportError(
            f"cannot search the reference runs of {ref.parent_run_id} in {ref.tracking_uri}: {exc}"
        ) from exc
    frame = runs_to_frame(runs)
    frame.insert(
        1,
        REFERENCE_COLUMN,
        pd.Series(
            [run.data.tags.get(names.TAG_REFERENCE) or None for run in runs],
            index=frame.index,
            dtype=object,
        ),
    )
    return frame


def load_metric_histories(
    ref: SweepRef, wanted: Mapping[str, Iterable[str]]
) -> dict[str, dict[str, History]]:
    """Histories of just the requested metrics: ``{run_id: {metric: [(step, value), ...]}}``.

    ``wanted`` maps a run id to the metric names to read for it (one
    ``MlflowClient.get_metric_history`` call per pair; ask only for what is drawn). A step
    logged more than once (a resumed trial) keeps its latest value; non-finite values are
    dropped; a metric the run never logged gives an empty history.
    """
    client = MlflowClient(tracking_uri=ref.tracking_uri)
    out: dict[str, dict[str, History]] = {}
    for run_id, metrics in wanted.items():
        per_run = out.setdefault(run_id, {})
        for metric in dict.fromkeys(metrics):
            try:
                logged = client.get_metric_history(run_id, metric)
            except MlflowException as exc:
                raise ReportError(
                    f"cannot read the history of {metric!r} of run {run_id} in "
                    f"{ref.tracking_uri}: {exc}"
                ) from exc
            latest: dict[int, tuple[int, float]] = {}
            for point in logged:
                value = float(point.value)
                if not math.isfinite(value):
                    continue
                step = int(point.step)
                current = latest.get(step)
                if current is None or point.timestamp >= current[0]:
                    latest[step] = (int(point.timestamp), value)
            per_run[metric] = [(step, latest[step][1]) for step in sorted(latest)]
    return out


def read_artifact_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    """Text of a run artifact, or None when the run has no such artifact."""
    try:
        names = {info.path for info in client.list_artifacts(run_id)}
    except (MlflowException, OSError):
        return None
    if path not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="ukd-report-") as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
            return Path(local).read_text(encoding="utf-8")
        except (MlflowException, OSError, UnicodeDecodeError):
            return None


# Base columns of the runs frame; tags / params / metrics follow as "tags.<key>",
# "params.<key>" (dotted keys kept) and "metrics.<key>" (final = latest-step value).
BASE_COLUMNS = [
    "run_id",
    "run_name",
    "status",
    "start_time",
    "end_time",
    "trial_id",
    "teacher",
    "student",
    "objective",
    "seed",
    "failure_reason",
    "failure_epoch",
]


def runs_to_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: base columns, then ``tags.*``, ``params.*`` and ``metrics.*``."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        tags = run.data.tags
        params = run.data.params
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "trial_id": tags.get("ukd.trial_id") or run.info.run_id[:8],
            "teacher": tags.get("ukd.teacher") or params.get("teacher"),
            "student": tags.get("ukd.student") or params.get("student"),
            "objective": tags.get("ukd.objective") or params.get("loss.name"),
            "seed": params.get("seed"),
            "failure_reason": tags.get("ukd.failure_reason"),
            "failure_epoch": tags.get("ukd.failure_epoch"),
        }
        row.update({f"tags.{k}": v for k, v in tags.items()})
        row.update({f"params.{k}": v for k, v in params.items()})
        row.update({f"metrics.{k}": float(v) for k, v in run.data.metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else BASE_COLUMNS)
    extra = sorted(c for c in frame.columns if c not in BASE_COLUMNS)
    frame = frame.reindex(columns=BASE_COLUMNS + extra)
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def parse_axes(value: str | None) -> list[str] | None:
    """The ``ukd.axes`` tag (a JSON list of trial-param keys), or None if absent/invalid."""
    if not value:
        return None
    try:
        axes = json.loads(value)
    except json.JSONDecodeError:
        return None
    if not isinstance(axes, list):
        return None
    return [str(axis) for axis in axes]


def parse_trials_yaml(text: str) -> list[dict[str, str]] | None:
    """The sweep's trials from the parent run's ``trials.yaml``: a list with each trial's
    flat params (the orchestrator's ``flat_params``, the same keys as the runs' params);
    None when the file is not such a list."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, list) or not all(isinstance(entry, dict) for entry in doc):
        return None
    return [_flatten(entry) for entry in doc]


def _flatten(mapping: Mapping[Any, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = str(value)
    return flat
