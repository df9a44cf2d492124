"""Spec validation: every rejection names the file, the YAML path and what is allowed."""

from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec.load import load_spec
from tests.orchestrator.specs import minimal_spec


def _error(write_spec: Any, data: Any) -> SpecError:
    path = write_spec(data)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    return info.value


def test_valid_spec_loads_with_absolute_paths(write_spec: Any) -> None:
    spec = load_spec(write_spec(minimal_spec()))
    assert spec.output_dir.is_absolute() and spec.cache_dir.is_absolute()
    assert len(spec.grid.pairs) == 2
    assert spec.grid.loss[0].axes["lambda"] == (0.5, 1.0)


@pytest.mark.parametrize(
    ("mutate", "yaml_path", "fragment"),
    [
        (lambda s: s.update(epochz=3), "epochz", "allowed: name"),
        (lambda s: s["train"].update(epochs="ten"), "train.epochs", "expected int"),
        (lambda s: s["train"].update(epochs=0), "train.epochs", "must be > 0"),
        (lambda s: s["train"].update(lr=-1), "train.lr", "must be > 0"),
        (lambda s: s["grid"].update(student=["resnet9000"]), "grid.student[0]", "allowed:"),
        (lambda s: s["grid"].update(student=[]), "grid.student", "at least one value"),
        (lambda s: s["grid"].update(loss=[{"name": "cosss"}]), "grid.loss[0].name", "coss"),
        (lambda s: s["grid"].update(loss=[{"name": "coss", "lamda": 1}]), "grid.loss[0].lamda",
         "allowed: name, lambda"),
        (lambda s: s["grid"].update(loss=[{"name": "coss", "lambda": -1}]), "grid.loss[0]",
         "lambda must be >= 0"),
        (lambda s: s["grid"].update(batch_size=[0]), "grid.batch_size[0]", "must be > 0"),
        (lambda s: s["grid"].update(teacher="nobody"), "grid.teacher[0]", "allowed: t"),
        (lambda s: s["dataset"].update(name="imagenet1k"), "dataset.name", "allowed: cifar10"),
        (lambda s: s["teachers"]["t"].update(source="hub"), "teachers.t.source", "pretrain"),
        (lambda s: s["teachers"]["t"]["pretrain"].update(recipe="byol"),
         "teachers.t.pretrain.recipe", "simclr"),
        (lambda s: s["teachers"]["t"].update(source="checkpoint", pretrain=None),
         "teachers.t.pretrain", "only allowed with source: pretrain"),
        (lambda s: s["grid"].update(seed=[0, 0]), "grid.seed", "duplicate"),
        (lambda s: s["grid"].update(batch_size=[1]), "grid.batch_size", "too small for coss"),
        (lambda s: s["resources"] if False else s.update(resources={"cpu": 0}), "resources.cpu",
         "must be > 0"),
        (lambda s: s["train"].update(batch_size=True), "train.batch_size", "expected int"),
        (lambda s: s["dataset"].update(gpu_share=0), "dataset.gpu_share", "must be > 0"),
        (lambda s: s["dataset"].update(gpu_share=1.5), "dataset.gpu_share", "must be <= 1"),
        (lambda s: s["dataset"].update(gpu_share=0.5), "dataset", "set decode: gpu"),
    ],
)
def test_bad_values_name_the_yaml_path(write_spec: Any, mutate: Any, yaml_path: str,
                                       fragment: str) -> None:
    data = minimal_spec()
    mutate(data)
    err = _error(write_spec, data)
    assert err.yaml_path == yaml_path, str(err)
    assert fragment in str(err)


def test_malformed_yaml_reports_line(write_spec: Any) -> None:
    err = _error(write_spec, "name: x\ngrid: [unclosed\n")
    assert "malformed YAML" in str(err) and "line" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_missing_checkpoint_is_rejected(write_spec: Any, tmp_path: Path) -> None:
    data = minimal_spec()
    data["teachers"]["t"] = {"arch": "resnet20", "source": "checkpoint",
                             "checkpoint": str(tmp_path / "missing.pt")}
    err = _error(write_spec, data)
    assert err.yaml_path == "teachers.t.checkpoint" and "no such file" in str(err)


def test_labelled_objective_on_unlabelled_data_is_rejected(write_spec: Any) -> None:
    data = minimal_spec()
    data["dataset"]["labels"] = False
    data["grid"]["loss"] = [{"name": "sskd"}]
    err = _error(write_spec, data)
    assert err.yaml_path == "grid.loss[0]" and "sskd needs class labels" in str(err)


def test_supervised_teacher_on_unlabelled_data_is_rejected(write_spec: Any) -> None:
    data = minimal_spec()
    data["dataset"]["labels"] = False
    data["teachers"]["t"]["pretrain"]["recipe"] = "supervised"
    err = _error(write_spec, data)
    assert err.yaml_path == "teachers.t.pretrain.recipe" and "without labels" in str(err)


def test_objective_needing_classifier_teacher_is_rejected(write_spec: Any) -> None:
    data = minimal_spec()
    data["grid"]["loss"] = [{"name": "kd"}]
    err = _error(write_spec, data)
    assert "classifier" in str(err)


def test_yaml_is_never_executed(write_spec: Any) -> None:
    err = _error(write_spec, "name: !!python/object/apply:os.system ['echo pwned']\n")
    assert "malformed YAML" in str(err)
