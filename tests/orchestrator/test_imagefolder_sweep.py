"""A sweep over a generated image folder end to end: the real `ukd sweep` (Ray Tune, MLflow on
SQLite) on JPEG and PNG files of mixed sizes and colour modes, streamed with the ``mocov2``
preset, a teacher pretrained on the folder, the linear probe, then `ukd report`; and a sweep
whose folder holds a file that no longer decodes: its trials fail naming the file, on the
console without a traceback and as the runs' failure reason, and the sweep still ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from orchestrator.data.folders import scan
from tests.orchestrator.imagefolders import make_folder
from tests.orchestrator.sweeps import run_ukd, tiny_spec, write_spec


def _spec(tmp: Path, cache: Path, root: Path, name: str, epochs: int = 2) -> Path:
    spec = tiny_spec(
        tmp, cache, name=name,
        dataset={"name": "imagefolder", "root": str(root), "image_size": 16,
                 "storage": "stream", "workers": 1},
        teachers={"t": {"arch": "resnet20", "source": "pretrain",
                        "pretrain": {"recipe": "simclr", "epochs": 1, "batch_size": 64}}},
        train={"epochs": epochs, "batch_size": 24, "augment": "mocov2"},
        eval={"linear": {"epochs": 3}})
    spec["grid"]["loss"] = [{"name": "coss", "neighbours": 3, "epoch_anchors": 0.25},
                            {"name": "cos", "neighbours": 0}]
    return write_spec(tmp / f"{name}.yaml", spec)


def _runs(out: Path) -> tuple[MlflowClient, list[Any]]:
    manifest = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=manifest["tracking_uri"])
    runs = client.search_runs([manifest["experiment_id"]], "tags.`ukd.kind` = 'trial'")
    return client, runs


@pytest.fixture(scope="module")
def folder_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("folder-sweep")
    root = make_folder(tmp / "images", classes=3, train=24, val=8)
    spec = _spec(tmp, tmp / "cache", root, "folder")
    done = run_ukd(["sweep", str(spec)])
    return {"tmp": tmp, "root": root, "done": done, "out": tmp / "out"}


def test_a_sweep_over_an_image_folder_finishes(folder_sweep: dict[str, Any]) -> None:
    done = folder_sweep["done"]
    assert done.returncode == 0, done.stdout + done.stderr
    _, runs = _runs(folder_sweep["out"])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert {"knn/top1_k10", "linear/top1", "teacher_knn/top1_k10"} <= set(metrics)
        # The teacher separates the classes' colours (3 classes: chance is 33 %); two epochs
        # on 72 images say little of a student (learning is test_imagefolder.py's).
        assert metrics["teacher_knn/top1_k10"] > 50
        assert 0 <= metrics["knn/top1_k10"] <= 100 and 0 <= metrics["linear/top1"] <= 100
        assert run.data.params["dataset.name"] == "imagefolder"
        assert run.data.params["augment"] == "mocov2"
    report = run_ukd(["report", str(folder_sweep["out"])])
    assert report.returncode == 0, report.stdout + report.stderr
    assert "coss" in report.stdout and "cos" in report.stdout


@pytest.mark.slow  # a second sweep (~3 min on 2 cores); test_imagefolder.py names the file
def test_an_unreadable_file_fails_the_trials_naming_it(folder_sweep: dict[str, Any]) -> None:
    """Same folder and teacher cache (the stage read the folder before the file broke)."""
    tmp, root = folder_sweep["tmp"], folder_sweep["root"]
    assert folder_sweep["done"].returncode == 0
    bad = Path(scan(str(root)).train_files[5])
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")
    (tmp / "broken").mkdir()
    spec = _spec(tmp / "broken", tmp / "cache", root, "broken", epochs=1)
    done = run_ukd(["sweep", str(spec)])
    console = done.stdout + done.stderr
    assert done.returncode != 0 and str(bad) in console, console
    assert "Traceback" not in console
    _, runs = _runs(tmp / "broken" / "out")
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED"
        assert str(bad) in run.data.tags["ukd.failure_reason"]
