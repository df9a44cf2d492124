"""The per-trial table: every run, any status, with its varying params and run id."""

from __future__ import annotations

import csv
import io

import pytest

from reports.source import load_sweep, resolve_sweep
from reports.tables import build_comparison
from reports.trials_table import (
    REASON,
    RUN_ID,
    STATUS,
    build_trials_frame,
    trials_csv,
    trials_table_html,
)
from tests.reports.picture_builders import PictureStore, picture_store
from tests.reports.report_builders import Store


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> PictureStore:
    return picture_store(tmp_path_factory)


def test_every_run_of_the_main_sweep_with_its_run_id(store: Store) -> None:
    data = load_sweep(resolve_sweep(store.root))
    table = build_comparison(data)
    superseded = {r.run_id for r in table.superseded}
    frame = build_trials_frame(data, "knn/top1_k10", superseded)
    assert sorted(frame[RUN_ID]) == sorted(store.main.run_ids)  # 18 runs, retries included
    assert list(frame.columns) == [
        "trial",
        "teacher",
        "student",
        "objective",
        "loss.lambda",
        "seed",
        STATUS,
        "knn/top1_k10",
        "knn/top5_k20",
        "train_time_s",
        "failure epoch",
        REASON,
        RUN_ID,
    ]
    statuses = frame[STATUS].value_counts().to_dict()
    assert statuses == {"FINISHED": 15, "FAILED": 1, "FAILED (retried)": 1, "KILLED": 1}
    failed = frame[frame[REASON] == "CUDA out of memory"].iloc[0]
    assert (failed[STATUS], failed["failure epoch"], failed["seed"]) == ("FAILED", "2", "1")
    assert failed["knn/top1_k10"] != failed["knn/top1_k10"]  # NaN: no metric
    first = frame[frame[RUN_ID] == store.main.run_ids[0]].iloc[0]
    assert (first["loss.lambda"], first["knn/top1_k10"]) == ("0.5", 60.0)

    page = trials_table_html(frame, "knn/top1_k10")
    assert page.count("<tr class=") == 18
    for run_id in store.main.run_ids:
        assert f"<code>{run_id}</code>" in page
    assert "<td>NaN loss</td>" in page and 'class="status-killed"' in page
    assert '<td class="num">60.00</td>' in page

    rows = list(csv.DictReader(io.StringIO(trials_csv(frame))))
    assert sorted(r[RUN_ID] for r in rows) == sorted(store.main.run_ids)


def test_any_metric_and_escaping(pictures: PictureStore) -> None:
    data = load_sweep(resolve_sweep(pictures.pictures.directory))
    frame = build_trials_frame(data, "linear/top1")
    assert sorted(frame[RUN_ID]) == sorted(pictures.pictures.run_ids)
    columns = list(frame.columns)
    assert columns[columns.index(STATUS) + 1] == "linear/top1"
    # The other final metrics; no per-epoch series, no teacher references.
    assert "knn/top1_k10" in columns and "knn/top1_k10_best" in columns
    assert not [c for c in columns if c.startswith(("loss/", "teacher_")) or c == "lr"]
    assert [c for c in columns if c in ("student", "loss.lambda", "seed")] == [
        "student",
        "loss.lambda",
        "seed",
    ]
    page = trials_table_html(frame.assign(**{REASON: "<b>boom</b> & co"}), "linear/top1")
    assert "<b>" not in page and "&lt;b&gt;boom&lt;/b&gt; &amp; co" in page
