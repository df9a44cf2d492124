"""Reference rows: loading the reference runs of a sweep and averaging them over seeds."""

from __future__ import annotations

import pytest

from reports.references import reference_values, references_for
from reports.source import REFERENCE_COLUMN, load_references, resolve_sweep
from tests.reports.picture_builders import R18, WRN, PictureStore, picture_store
from tests.reports.report_builders import Store


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> PictureStore:
    return picture_store(tmp_path_factory)


def test_load_references_reads_only_this_parents_reference_runs(pictures: PictureStore) -> None:
    frame = load_references(resolve_sweep(pictures.pictures.directory))
    assert sorted(frame["run_id"]) == sorted(pictures.pictures.reference_ids)
    assert not set(frame["run_id"]) & set(pictures.pictures.run_ids)  # no trial runs
    assert set(frame[REFERENCE_COLUMN]) == {"random_init", "ssl_only", "supervised_only"}
    assert set(frame["student"]) == {R18, WRN}
    assert sorted(frame["status"].value_counts().items()) == [("FAILED", 1), ("FINISHED", 5)]
    assert set(frame["seed"]) == {"0", "1"}
    assert "metrics.knn/top1_k10" in frame.columns and "metrics.linear/top1" in frame.columns

    other = load_references(resolve_sweep(pictures.two_axes.directory))
    assert list(other["run_id"]) == pictures.two_axes.reference_ids


def test_sweep_without_references_gives_an_empty_frame(store: Store) -> None:
    frame = load_references(resolve_sweep(store.root))
    assert frame.empty
    assert REFERENCE_COLUMN in frame.columns and "student" in frame.columns
    assert reference_values(frame, "knn/top1_k10") == []


def test_reference_values_average_finished_seeds(pictures: PictureStore) -> None:
    frame = load_references(resolve_sweep(pictures.pictures.directory))
    values = reference_values(frame, "knn/top1_k10")
    by_key = {(v.student, v.reference): v for v in values}
    assert list(by_key) == [(R18, "random_init"), (R18, "ssl_only"), (WRN, "supervised_only")]
    random_init = by_key[(R18, "random_init")]
    # Seed 0 was run twice: the newest run (30) counts, the older one (99) does not.
    assert random_init.values == (30.0, 32.0) and random_init.seeds == ("0", "1")
    assert random_init.mean == pytest.approx(31.0)
    assert random_init.std == pytest.approx(1.4142135, rel=1e-6)  # sample std, ddof=1
    ssl_only = by_key[(R18, "ssl_only")]
    assert (ssl_only.n, ssl_only.mean, ssl_only.std) == (1, 45.0, None)  # the FAILED seed left out
    assert [v.reference for v in references_for(values, WRN)] == ["supervised_only"]
    assert references_for(values, "vit_tiny") == []

    linear = {(v.student, v.reference): v.mean for v in reference_values(frame, "linear/top1")}
    assert linear[(R18, "random_init")] == pytest.approx(32.0)
    assert reference_values(frame, "knn/top5_k20") == []
