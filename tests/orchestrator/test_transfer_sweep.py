"""Transfer evaluation through a real sweep (`ukd sweep`: Ray Tune, MLflow on SQLite, then
`ukd report`): an image folder as the downstream dataset; every trial, the teacher and the
random_init reference log ``transfer/<dataset>/top1``, and the report writes the transfer
table into every format and index.html."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.orchestrator.imagefolders import make_folder
from tests.orchestrator.sweeps import run_ukd, tiny_spec, write_spec
from tests.orchestrator.transferdata import transfer_folder

METRIC = "transfer/pictures/top1"


@pytest.fixture(scope="module")
def transfer_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("transfer-sweep")
    root = make_folder(tmp / "images", classes=3, train=16, val=6)
    downstream = transfer_folder(tmp / "pictures", classes=3, train=12, test=6, size=24)
    spec = tiny_spec(
        tmp, tmp / "cache", name="transfer",
        dataset={"name": "imagefolder", "root": str(root), "image_size": 16, "workers": 0},
        teachers={"t": {"arch": "resnet20", "source": "pretrain",
                        "pretrain": {"recipe": "simclr", "epochs": 1, "batch_size": 64}}},
        train={"epochs": 1, "batch_size": 24, "augment": "ssl_light"},
        eval={"transfer": {"datasets": [{"name": "imagefolder", "root": str(downstream)}],
                           "image_size": 16, "grid": 9, "max_iter": 200}},
        references={"random_init": True})
    spec["grid"]["seed"] = [0, 1]
    path = write_spec(tmp / "transfer.yaml", spec)
    done = run_ukd(["sweep", str(path)])
    return {"tmp": tmp, "done": done, "out": tmp / "out"}


def _runs(out: Path, kind: str) -> list[Any]:
    manifest = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=manifest["tracking_uri"])
    return client.search_runs([manifest["experiment_id"]], f"tags.`ukd.kind` = '{kind}'")


def test_trials_teacher_and_references_log_the_transfer_metric(
        transfer_sweep: dict[str, Any]) -> None:
    done = transfer_sweep["done"]
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _runs(transfer_sweep["out"], "trial")
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert 0 <= metrics[METRIC] <= 100 and 0 <= metrics["teacher_" + METRIC] <= 100
        assert metrics["transfer/pictures/C"] > 0
        assert json.loads(run.data.params["transfer.datasets"]) == ["pictures"]
    # The teacher's value is the same for both trials (one teacher, computed once).
    assert len({run.data.metrics["teacher_" + METRIC] for run in trials}) == 1
    references = _runs(transfer_sweep["out"], "reference")
    assert len(references) == 2  # random_init per seed
    assert all(0 <= r.data.metrics[METRIC] <= 100 for r in references)


def test_the_report_writes_the_transfer_table(transfer_sweep: dict[str, Any]) -> None:
    assert transfer_sweep["done"].returncode == 0
    out = transfer_sweep["out"]
    report = run_ukd(["report", str(out)])
    assert report.returncode == 0, report.stdout + report.stderr
    folder = out / "report"
    trials = _runs(out, "trial")
    values = sorted(r.data.metrics[METRIC] for r in trials)
    rows = {row["row"]: row for row in csv.DictReader((folder / "transfer.csv").open())}
    trial_row = rows["t -> resnet20 cosine"]
    assert float(trial_row["pictures_mean"]) == pytest.approx(sum(values) / 2)
    assert trial_row["pictures_n"] == "2" and trial_row["mean_n"] == "2"
    assert float(rows["teacher t"]["pictures_mean"]) == pytest.approx(
        trials[0].data.metrics["teacher_" + METRIC])
    assert rows["resnet20 random_init"]["pictures_n"] == "2"
    for suffix in ("md", "tex", "html"):
        text = (folder / f"transfer.{suffix}").read_text()
        assert "pictures" in text and "random" in text and "cosine" in text
    index = (folder / "index.html").read_text()
    assert 'id="transfer"' in index and "t -&gt; resnet20 cosine" in index
