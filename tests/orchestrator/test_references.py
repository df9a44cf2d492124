"""Reference stages (random_init, ssl_only, supervised_only): planned from the spec, cached
and reused, logged as runs of their own; the teacher's linear probe; the MLflow fit of the
tracker (experiment kind, dataset inputs, the parent's summary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from common import names as N
from models.base import build_model
from models.checkpoint_format import save_teacher
from models.pretrain import PretrainConfig
from orchestrator.cli import app
from orchestrator.data.streams import seeded_init
from orchestrator.errors import SpecError
from orchestrator.spec.config import (
    CheckpointSource,
    DatasetConfig,
    EvalConfig,
    KnnConfig,
    LinearConfig,
    ReferenceConfig,
    TeacherConfig,
)
from orchestrator.spec.grid import expand
from orchestrator.spec.load import parse_spec
from orchestrator.stages import references as R
from orchestrator.tracking import Tracker
from tests.orchestrator.specs import minimal_spec

EVAL = EvalConfig(knn=KnnConfig(k=(10,)), linear=LinearConfig(epochs=10))
DIGITS = DatasetConfig("digits")


def _spec(**overrides: Any) -> Any:
    return parse_spec(minimal_spec(**overrides), Path("spec.yaml"))


def test_references_section_and_plan() -> None:
    spec = _spec(references={"random_init": True, "ssl_only": {"recipe": "mocov2"},
                             "supervised_only": {"epochs": 3, "lr": 0.1}},
                 train={"epochs": 4, "batch_size": 32})
    refs = spec.references
    assert refs.kinds == ("random_init", "ssl_only", "supervised_only")
    assert refs.ssl_only is not None and refs.ssl_only.epochs == 4  # the trials' epochs
    assert refs.ssl_only.recipe == "mocov2"
    assert refs.supervised_only is not None and refs.supervised_only.recipe == "supervised"
    assert refs.supervised_only.epochs == 3 and refs.supervised_only.lr == 0.1
    planned = R.plan_references(refs, expand(spec))
    # 3 kinds x 2 students (resnet8x4, wrn_16_2) x 2 seeds
    assert len(planned) == 12 and len({r.run_key for r in planned}) == 12
    first = planned[0]
    assert (first.kind, first.student, first.seed, first.recipe) == \
        ("random_init", "resnet8x4", 0, None)
    ssl = next(r for r in planned if r.kind == "ssl_only" and r.seed == 1)
    assert ssl.recipe is not None and (ssl.recipe.arch, ssl.recipe.seed) == (ssl.student, 1)
    assert ssl.recipe.in_channels == 1  # digits
    assert ssl.params()["seed"] == "1" and ssl.params()["recipe.recipe"] == "mocov2"
    assert not _spec().references.kinds
    assert R.plan_references(_spec().references, expand(_spec())) == []


def test_true_means_the_defaults_and_false_means_off() -> None:
    refs = _spec(references={"ssl_only": True, "supervised_only": False}).references
    assert refs.kinds == ("ssl_only",) and refs.ssl_only is not None
    assert refs.ssl_only.recipe == "simclr"


@pytest.mark.parametrize(("overrides", "where", "fragment"), [
    ({"dataset": {"name": "digits", "labels": False},
      "references": {"supervised_only": True}},
     "references.supervised_only", "dataset.labels: false"),
    ({"references": {"ssl_only": {"recipe": "supervised"}}},
     "references.ssl_only.recipe", "allowed: simclr, mocov2"),
    ({"references": {"no_teacher": True}}, "references.no_teacher",
     "allowed: random_init, ssl_only, supervised_only"),
    ({"references": {"supervised_only": {"temperature": 0.1}}},
     "references.supervised_only.temperature", "allowed: epochs, batch_size"),
    ({"references": {"random_init": "yes"}}, "references.random_init", "expected bool"),
    ({"references": {"ssl_only": {"epochs": 0}}}, "references.ssl_only.epochs", ">= 1"),
])
def test_bad_references(overrides: dict[str, Any], where: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        _spec(**overrides)
    assert f"at `{where}`" in str(info.value) and fragment in str(info.value), info.value


def test_bad_references_through_the_cli(write_spec: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_spec(minimal_spec(dataset={"name": "digits", "labels": False},
                                   references={"supervised_only": True}))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["sweep", str(path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{path} at `references.supervised_only`" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_dry_run_lists_the_references(write_spec: Any, tmp_path: Path) -> None:
    path = write_spec(minimal_spec(references={"random_init": True,
                                               "ssl_only": {"epochs": 2}},
                                   eval={"linear": True},
                                   output_dir=str(tmp_path / "out")))
    result = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("reference random_init") == 2  # one row per student
    assert "train simclr (2 epochs, no teacher)" in result.output
    assert "kNN + linear probe, seed 0, 1" in result.output
    assert "teacher kNN + linear probe" in result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- stages


def _ref(kind: str, seed: int = 0, epochs: int = 1) -> ReferenceConfig:
    recipe = None if kind == "random_init" else PretrainConfig(
        recipe="simclr" if kind == "ssl_only" else "supervised", arch="resnet20",
        epochs=epochs, batch_size=256, seed=seed, in_channels=1)
    return ReferenceConfig(kind, "resnet20", DIGITS, seed, recipe, EVAL)


def test_random_init_is_the_trials_initial_student(tmp_path: Path) -> None:
    ref = _ref("random_init", seed=3)
    model = R._build_untrained(ref, 1)
    with seeded_init(3):  # what build_member does for a label-free trial of seed 3
        trial_student = build_model("resnet20", None, 1)
    for a, b in zip(model.state_dict().values(), trial_student.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    report = R.ensure_reference(ref, tmp_path, "cpu", 1)
    assert {"knn/top1_k10", "knn/top5_k10", "linear/top1", "linear/top5"} == set(report.metrics)
    assert report.metrics["knn/top1_k10"] > 50.0  # digits: random features already cluster
    assert not report.trained_now and report.train_time_s == 0.0


def test_reference_stages_are_cached_and_reused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _ref("ssl_only", seed=0, epochs=1)
    assert ref.recipe is not None and ref.recipe.recipe == "simclr"
    first = R.ensure_reference(ref, tmp_path, "cpu", 1)
    assert first.trained_now and first.train_time_s > 0 and len(first.history) == 1
    directory = R.reference_dir(tmp_path, ref.key)
    assert (directory / R.WEIGHTS_FILE).is_file()
    assert (directory / f"eval-{ref.eval_key}.json").is_file()

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached reference was trained again")

    def no_evaluation(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached evaluation ran again")

    monkeypatch.setattr(R, "pretrain_teacher", no_training)
    monkeypatch.setattr(R, "evaluate_model", no_evaluation)
    again = R.ensure_reference(ref, tmp_path, "cpu", 1)
    assert not again.trained_now and again.metrics == first.metrics
    assert again.train_time_s == first.train_time_s and again.history == first.history
    # Another evaluation setting: the cached weights, evaluated again (nothing trained).
    monkeypatch.undo()
    monkeypatch.setattr(R, "pretrain_teacher", no_training)
    other = ReferenceConfig(ref.kind, ref.student, ref.dataset, ref.seed, ref.recipe,
                            EvalConfig(knn=KnnConfig(k=(20,))))
    assert other.key == ref.key and other.run_key != ref.run_key
    scores = R.ensure_reference(other, tmp_path, "cpu", 1)
    assert set(scores.metrics) == {"knn/top1_k20", "knn/top5_k20"}


def test_supervised_only_scores_its_own_classifier(tmp_path: Path) -> None:
    spec = _spec(references={"supervised_only": {"epochs": 1, "batch_size": 256}},
                 eval={"classifier": True},
                 grid={"teacher": "t", "student": "resnet20", "loss": "cos", "seed": [0]})
    (ref,) = R.plan_references(spec.references, expand(spec))
    report = R.ensure_reference(ref, tmp_path, "cpu", 1)
    assert report.trained_now
    assert {"classifier/top1", "classifier/top5", "knn/top1_k10"} <= set(report.metrics)
    assert 0.0 <= report.metrics["classifier/top1"] <= 100.0


def test_teacher_linear_probe_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "teacher.pt"
    with seeded_init(0):
        save_teacher(path, build_model("resnet20", None, 1), None, {"label": "t"})
    teacher = TeacherConfig("t", CheckpointSource(arch="resnet20", checkpoint=str(path)),
                            "digits")
    metrics = R.ensure_teacher_metrics(teacher, DIGITS, EVAL, tmp_path / "cache", "cpu", 1)
    assert set(metrics) == {"linear/top1", "linear/top5"} and metrics["linear/top1"] > 50.0
    monkeypatch.setattr(R, "evaluate_model", lambda *a, **k: pytest.fail("evaluated again"))
    assert R.ensure_teacher_metrics(teacher, DIGITS, EVAL, tmp_path / "cache", "cpu",
                                    1) == metrics
    assert R.ensure_teacher_metrics(teacher, DIGITS, EvalConfig(), tmp_path / "cache") == {}


# ----------------------------------------------------------------------------- tracking


def test_tracker_logs_references_and_fits_mlflow(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "ukd/t", tmp_path / "artifacts")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.tags[N.TAG_EXPERIMENT_KIND] == N.EXPERIMENT_KIND == \
        "custom_model_development"
    parent = tracker.open_sweep("s1", "t", {})
    ref = ReferenceConfig("random_init", "resnet20", DIGITS, 1, None, EVAL)
    from orchestrator.spec.config import ReferenceReport

    report = ReferenceReport(ref.key, ref.kind, ref.student, 1, str(tmp_path),
                             {"knn/top1_k10": 88.0, "linear/top1": 90.0})
    run_id = tracker.log_reference(ref, report)
    failed = tracker.log_reference(ReferenceConfig("random_init", "resnet20", DIGITS, 2, None,
                                                   EVAL), None, "reference stage failed: x")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and client.get_run(failed).info.status == "FAILED"
    tags = run.data.tags
    assert tags[N.TAG_KIND] == N.KIND_REFERENCE and tags[N.TAG_REFERENCE] == "random_init"
    assert tags[N.TAG_STUDENT] == "resnet20" and tags[N.TAG_PARENT] == parent
    assert run.data.params["seed"] == "1" and run.data.params["linear.epochs"] == "10"
    assert run.data.metrics == {"knn/top1_k10": 88.0, "linear/top1": 90.0, "train_time_s": 0.0}
    assert run.inputs is not None
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "digits"
    assert {t.key: t.value for t in dataset.tags} == {"mlflow.data.context": "train"}
    assert tracker.logged_references() == {ref.run_key}
    # The reports read it back as a reference row.
    from reports.references import reference_values
    from reports.source import SweepRef, load_references

    values = reference_values(load_references(SweepRef(uri, tracker.experiment_id, parent)),
                              "linear/top1")
    assert [(v.student, v.reference, v.values) for v in values] == \
        [("resnet20", "random_init", (90.0,))]
    tracker.close_sweep("FINISHED")
    summary = client.get_run(parent).data.metrics
    assert summary["trials/finished"] == 0.0 and summary["trials/failed"] == 0.0
    # An experiment made before the tag existed gets it when a sweep opens it again.
    client.delete_experiment_tag(tracker.experiment_id, N.TAG_EXPERIMENT_KIND)
    Tracker(uri, "ukd/t")
    assert client.get_experiment(tracker.experiment_id).tags[N.TAG_EXPERIMENT_KIND] == \
        N.EXPERIMENT_KIND
