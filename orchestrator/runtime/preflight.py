"""Checks that need the filesystem or the network, done once, before Ray starts or anything is
written: the dataset, the teachers' checkpoints / weights, the output and cache directories,
the tracking URI and an existing sweep's manifest.

Every failure is a UserInputError naming the spec file (or option), the YAML path and what is
allowed.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from pathlib import Path

from common.names import EXPERIMENT_PREFIX, SWEEP_JSON
from orchestrator.data.class_subset import check_classes
from orchestrator.data.datasets import DATASETS, check_available
from orchestrator.errors import UserInputError
from orchestrator.spec.config import TrialConfig
from orchestrator.spec.load import SweepSpec
from orchestrator.stages.teachers import check_teacher_sources, teacher_needs_by_label

_VERIFIED_DATA: set[tuple[str, str | None]] = set()  # datasets read once in this process


def preflight(spec: SweepSpec, trials: list[TrialConfig],
              tracking_uri: str | None = None) -> None:
    """All the checks of this module, in order."""
    src = spec.source_path
    data = (spec.dataset.name, spec.dataset.root)
    try:
        check_available(spec.dataset.name, spec.dataset.root, spec.dataset.download)
        info = DATASETS[spec.dataset.name]
        if info.needs_root and not info.folder and not spec.dataset.download \
                and data not in _VERIFIED_DATA:
            # The files are there and sound (not kept: the trials load their own copy).
            info.loader(spec.dataset)
            _VERIFIED_DATA.add(data)
    except UserInputError as exc:
        raise UserInputError(f"{src} at `dataset.root`: {exc}") from None
    if spec.dataset.classes is not None:  # the subset's classes are folders of the root
        try:
            check_classes(spec.dataset.classes, spec.dataset.root or "")
        except UserInputError as exc:
            raise UserInputError(f"{src} at `dataset.classes`: {exc}") from None
    check_teacher_sources(dict(spec.teachers), src, DATASETS[spec.dataset.name].channels,
                          teacher_needs_by_label(trials))
    check_writable(spec.output_dir, _output_origin(spec), "output directory")
    check_writable(spec.cache_dir, f"{src} at `cache_dir`", "cache directory")
    if tracking_uri:
        check_tracking_uri(tracking_uri)
        from orchestrator.tracking import check_artifact_store

        check_artifact_store(tracking_uri, f"{EXPERIMENT_PREFIX}{spec.name}")
    manifest = spec.output_dir / SWEEP_JSON
    if not manifest.exists():
        return
    try:
        previous = json.loads(manifest.read_text())
        old = set(previous.get("trial_ids", []))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise UserInputError(f"{manifest} is not a readable ukd sweep manifest ({exc}); "
                             "use another --output") from None
    if previous.get("name", spec.name) != spec.name:
        raise UserInputError(
            f"{src} at `name`: {spec.output_dir} holds the sweep {previous.get('name')!r}, not "
            f"{spec.name!r}; keep the name to continue that sweep, or use another --output")
    removed = sorted(old - {t.trial_id for t in trials})
    if removed:
        shown = ", ".join(removed[:5]) + (", ..." if len(removed) > 5 else "")
        raise UserInputError(
            f"{src} at `grid`: {spec.output_dir} holds a sweep with {len(removed)} trial(s) "
            f"this grid no longer has ({shown}); an existing sweep's grid may only grow "
            "(add values or entries, keep the others unchanged); use another --output for a "
            "different grid")


def _output_origin(spec: SweepSpec) -> str:
    """Where the output directory came from: the spec's key, its default, or --output."""
    if not spec.output_from_spec:
        return "--output"
    default = " (default runs/<name>)" if spec.raw.get("output_dir") is None else ""
    return f"{spec.source_path} at `output_dir`{default}"


TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "", "postgresql", "mysql", "mssql",
                    "databricks")


def check_tracking_uri(uri: str) -> None:
    """An MLflow server must answer (MLflow itself would retry for minutes); a SQLite file
    must be creatable. Nothing is written."""
    from urllib.error import HTTPError, URLError
    from urllib.parse import urlparse
    from urllib.request import urlopen

    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise UserInputError(f"--tracking-uri {uri}: unsupported scheme {scheme!r}; allowed: "
                             "http(s)://host:port of an MLflow server, sqlite:///ABS/PATH.db, "
                             "file:, postgresql:, mysql:, mssql:, databricks")
    if scheme in ("http", "https"):
        try:
            with urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                pass
        except HTTPError:
            pass  # something answers; MLflow reports a wrong endpoint itself
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):
                return  # it answers; TLS settings are MLflow's (MLFLOW_TRACKING_INSECURE_TLS)
            raise UserInputError(
                f"--tracking-uri {uri}: no MLflow server answers there ({reason}); start one "
                "(mlflow server --host 127.0.0.1 --port 5000) or leave --tracking-uri out to "
                "log to SQLite in the output directory") from None
    elif scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise UserInputError(f"--tracking-uri {uri}: allowed: sqlite:///PATH.db (three "
                                 "slashes, then the path; sqlite:////abs/path.db)")
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        check_writable(db.parent, f"--tracking-uri {uri}", "database directory")


def check_writable(target: Path, where: str, what: str) -> None:
    """``target`` can be created (or exists) and written, checked without leaving anything."""
    probe = target
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = f"{probe} is not a directory"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".ukd-probe-", dir=probe))
        except OSError as exc:
            problem = f"cannot create anything in {probe} ({exc.strerror or exc})"
    if problem:
        raise UserInputError(f"{where}: the {what} {target} is not writable: {problem}; "
                             "allowed: a directory this user can create and write")
