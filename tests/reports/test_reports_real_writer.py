"""The report against what the orchestrator itself writes: a sweep interrupted before one of
its cells started. The grid comes from expand(), trials.yaml and the runs from the driver's
own writer (record_sweep, Tracker), so the report's readers see the real layout."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.runtime.driver import record_sweep
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.tracking import default_tracking_uri
from reports import build_comparison, load_sweep, resolve_sweep, to_markdown
from reports.records import ColumnKey, RowKey
from tests.orchestrator.specs import minimal_spec


def test_never_started_cell_is_counted_and_marked(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(minimal_spec(output_dir=str(tmp_path / "out"),
                                                     cache_dir=str(tmp_path / "cache"))))
    spec = load_spec(spec_file)
    trials = expand(spec)
    spec.output_dir.mkdir(parents=True)
    tracker, _ = record_sweep(spec, trials, default_tracking_uri(spec.output_dir))
    # The sweep was interrupted: the cos trials never started, the others finished.
    for i, trial in enumerate(t for t in trials if t.loss.name != "cos"):
        tracker.start_trial(trial)
        tracker.finish_trial(trial, {"knn/top1_k10": 50.0 + i, "epoch": 1})
    tracker.close_sweep("KILLED")

    table = build_comparison(load_sweep(resolve_sweep(str(spec.output_dir))))
    row = RowKey("t", "resnet8x4")
    cos = table.cell(row, ColumnKey("cos"))
    assert cos is not None, "the never-started cell vanished from the table"
    assert (cos.n, cos.missing, cos.expected) == (0, 2, 2)
    assert cos.incomplete and "2 missing" in cos.text() and cos.text().endswith("†")
    coss = table.cell(row, ColumnKey("coss", (("loss.lambda", "0.5"),)))
    assert coss is not None and (coss.n, coss.missing) == (2, 0)
    assert "(n=0, 2 missing) †" in to_markdown(table)
