"""Where the runs go: the tracking URI (a local SQLite file or an MLflow server), where a
server keeps artifacts (checked before anything is written), the sweep's experiment, and the
small pieces every kind of run logs with (metric batches, the dataset input)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric

from common import names as N
from common.hashing import content_hash
from orchestrator.spec.config import DatasetConfig

MAX_BATCH = 900  # MLflow accepts up to 1000 metrics per log_batch
# Keys Ray Tune adds to every reported result: not metrics of the trial.
TUNE_AUTO_KEYS = frozenset({
    "done", "training_iteration", "iterations_since_restore", "time_this_iter_s",
    "time_total_s", "time_since_restore", "timestamp", "pid", "node_ip", "hostname", "date",
    "experiment_id", "trial_id", "timesteps_total", "timesteps_since_restore",
    "episodes_total", "should_checkpoint", "checkpoint_dir_name", "config", "experiment_tag",
})


# MLflow's own loggers (mlflow.__init__ gives each a console handler): the database's
# "Creating initial MLflow database tables" INFO lines and alembic's migrations.
MLFLOW_LOGGERS = ("mlflow", "alembic")


class _Severe(logging.Handler):
    """Hands a record on to ``inner`` (MLflow's console handler) from WARNING up only."""

    def __init__(self, inner: logging.Handler) -> None:
        super().__init__(logging.WARNING)
        self.inner = inner

    def emit(self, record: logging.LogRecord) -> None:
        self.inner.handle(record)


@contextlib.contextmanager
def mlflow_log_to(path: Path) -> Iterator[None]:
    """For the block, MLflow's log lines go to the file ``path`` (the sweep's ``sweep.log``,
    created on the first line), and only its warnings and errors also to the console: a user
    has nothing to do about a new database's tables. The loggers are put back afterwards."""
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = {name: list(logging.getLogger(name).handlers) for name in MLFLOW_LOGGERS}
    for name, handlers in saved.items():
        logging.getLogger(name).handlers = [handler, *(_Severe(h) for h in handlers)]
    try:
        yield
    finally:
        for name, handlers in saved.items():
            logging.getLogger(name).handlers = handlers
        handler.close()


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{output_dir.resolve() / N.DEFAULT_DB}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def is_server(uri: str) -> bool:
    """An MLflow tracking server (artifacts go through it, or to its object store)."""
    return uri.startswith(("http://", "https://"))


def is_local_location(location: str) -> bool:
    """An artifact location that is a path of the machine writing it (file:, a bare path)."""
    from urllib.parse import urlparse

    scheme = urlparse(location).scheme
    return scheme in ("", "file") or len(scheme) == 1  # len 1: a Windows drive letter


def serves_artifacts(uri: str) -> bool | None:
    """Whether the MLflow server at ``uri`` proxies artifacts (``mlflow server`` with
    artifact serving, its default; --artifacts-destination says where they go); None when it
    cannot be told (e.g. the endpoint needs credentials)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    try:
        with urlopen(f"{uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts", timeout=30):
            return True
    except HTTPError as exc:
        return False if exc.code == 503 else None  # 503: --no-serve-artifacts
    except (URLError, OSError):
        return None


def check_artifact_store(uri: str, experiment_name: str) -> None:
    """With an MLflow server, every artifact (configs, weights, failure reports, the report)
    goes through the server or to an object store, never to a path of this machine's disk
    (the server's other users could not read it). Checked before anything is written."""
    from orchestrator.errors import UserInputError

    if not is_server(uri):
        return
    allowed = ("allowed: a server started with --artifacts-destination DIR_OR_BUCKET "
               "(proxied artifacts, `mlflow server`'s default), or an experiment created "
               f"beforehand with an object-store location (mlflow experiments create -n "
               f"{experiment_name} -l s3://BUCKET/PATH)")
    existing = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment_name)
    if existing is not None:
        if is_local_location(existing.artifact_location):
            raise UserInputError(
                f"--tracking-uri {uri}: the experiment {experiment_name} keeps its artifacts "
                f"at {existing.artifact_location}, a path on the disk of whoever logs them, "
                f"not on the server; {allowed}, or another sweep name")
        return
    if serves_artifacts(uri) is False:
        raise UserInputError(
            f"--tracking-uri {uri}: the MLflow server does not serve artifacts "
            "(--no-serve-artifacts), so its default artifact root is a path this machine would "
            f"write to; {allowed}")


def log_report(tracking_uri: str, parent_run_id: str, folder: Path,
               artifact_path: str = N.REPORT_ARTIFACTS) -> None:
    """The report folder as the parent run's ``report/`` artifacts (through the server when
    the tracking URI is one: the client uploads, never a path of this disk)."""
    MlflowClient(tracking_uri=tracking_uri).log_artifacts(parent_run_id, str(folder),
                                                          artifact_path=artifact_path)


def open_experiment(client: MlflowClient, tracking_uri: str, experiment_name: str,
                    artifact_dir: Path | None = None) -> str:
    """The sweep's experiment id: created (artifacts under ``artifact_dir`` when given) or
    reused, tagged with the kind MLflow 3 needs to open it in its classic view."""
    # MLflow prints a "View run at <url>" line per ended run against a server: the
    # sweep's display and summary already say where the runs are.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    existing = client.get_experiment_by_name(experiment_name)
    if existing is not None:
        experiment_id: str = existing.experiment_id
    else:
        location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
        experiment_id = client.create_experiment(
            experiment_name, location, tags={N.TAG_EXPERIMENT_KIND: N.EXPERIMENT_KIND})
    if existing is not None and existing.tags.get(N.TAG_EXPERIMENT_KIND) is None:
        # MLflow 3 opens an experiment without a kind in its GenAI view.
        client.set_experiment_tag(experiment_id, N.TAG_EXPERIMENT_KIND, N.EXPERIMENT_KIND)
    if is_server(tracking_uri):  # preflight checked; a server that answered "unknown"
        location = client.get_experiment(experiment_id).artifact_location
        if is_local_location(location):
            from orchestrator.errors import UserInputError

            raise UserInputError(
                f"--tracking-uri {tracking_uri}: the experiment {experiment_name} keeps "
                f"its artifacts at {location}, a path on this machine, not on the server; "
                "allowed: a server started with --artifacts-destination (proxied "
                "artifacts) or an object-store artifact location")
    return experiment_id


def now_ms() -> int:
    return int(time.time() * 1000)


def log_metric_batches(client: MlflowClient, run_id: str, metrics: Sequence[Metric]) -> None:
    """``metrics`` in batches MLflow accepts (:data:`MAX_BATCH`)."""
    for start in range(0, len(metrics), MAX_BATCH):
        client.log_batch(run_id, metrics=list(metrics[start:start + MAX_BATCH]))


def dataset_input(dataset: DatasetConfig, context: str = "train") -> DatasetInput:
    """The sweep's dataset as an MLflow dataset input (the UI's Dataset column): its name, a
    digest of the name (one dataset, one digest, whoever logs it), where it is read from and
    what the trials may use of it."""
    from orchestrator.data.datasets import DATASETS, image_size, num_classes, uses_labels

    info = DATASETS[dataset.name]
    source = dataset.root or ("sklearn.datasets.load_digits" if dataset.name == "digits"
                              else dataset.name)
    profile = {"num_classes": num_classes(dataset), "channels": info.channels,
               "image_size": image_size(dataset), "labels_used": uses_labels(dataset),
               "description": info.description}
    return DatasetInput(
        Dataset(name=dataset.name, digest=content_hash({"dataset": dataset.name}, 8),
                source_type="local", source=json.dumps({"uri": source}),
                profile=json.dumps(profile)),
        tags=[InputTag(N.TAG_DATA_CONTEXT, context)])


def numeric(metrics: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k not in exclude and k != "kind" and k not in TUNE_AUTO_KEYS
            and isinstance(v, int | float) and not isinstance(v, bool)}
