"""Teacher sources from the YAML: checkpoint and torchvision errors stop before Ray starts."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import yaml
from typer.testing import CliRunner

import models.hub
from models.base import build_model
from orchestrator.cli import app
from tests.orchestrator.specs import minimal_spec


def _spec_with_teacher(tmp_path: Path, teacher: dict[str, object]) -> Path:
    data = minimal_spec(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    data["teachers"] = {"t": teacher}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_mismatched_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "wrong.pt"
    torch.save(build_model("wrn_16_2", None, 1).state_dict(), ckpt)
    spec = _spec_with_teacher(tmp_path, {"arch": "resnet20", "source": "checkpoint",
                                         "checkpoint": str(ckpt)})
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2, result.output
    assert "teachers.t.checkpoint" in result.output and "missing" in result.output.lower()
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_matching_checkpoint_with_prefix_passes_preflight(tmp_path: Path) -> None:
    ckpt = tmp_path / "good.pt"
    state = {f"module.{k}": v for k, v in build_model("resnet20", None, 1).state_dict().items()}
    torch.save({"state_dict": state}, ckpt)
    spec = _spec_with_teacher(tmp_path, {"arch": "resnet20", "source": "checkpoint",
                                         "checkpoint": str(ckpt)})
    from orchestrator.runtime.preflight import preflight
    from orchestrator.spec.grid import expand
    from orchestrator.spec.load import load_spec

    loaded = load_spec(spec)
    preflight(loaded, expand(loaded))  # raises on failure


def test_torchvision_weights_offline_say_where_to_put_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url: str, dst: Path) -> None:
        raise URLError("no network")

    monkeypatch.setattr(models.hub, "_download", offline)
    spec = _spec_with_teacher(tmp_path, {"arch": "resnet18", "source": "torchvision",
                                         "weights": "IMAGENET1K_V1"})
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "teachers.t.weights" in text and "resnet18-" in text and "checkpoints" in text
    assert not (tmp_path / "out").exists()


def test_torchvision_weights_for_a_cifar_model_are_rejected(tmp_path: Path) -> None:
    spec = _spec_with_teacher(tmp_path, {"arch": "resnet20", "source": "torchvision"})
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2 and "teachers.t.weights" in result.output


def _moco_v2_checkpoint(path: Path, with_head: bool = True) -> dict[str, torch.Tensor]:
    """A checkpoint in the official MoCo-v2 layout (facebookresearch/moco main_moco.py's
    save_checkpoint): ``{"epoch", "arch", "state_dict", "optimizer"}`` with DDP's ``module.``
    prefix, the query encoder under ``encoder_q.`` with its MLP head as ``fc.0`` / ``fc.2``,
    the key encoder under ``encoder_k.`` and the ``queue``. Returns the head's weights."""
    torch.manual_seed(0)
    query, key = build_model("resnet20", None, 1), build_model("resnet20", None, 1)
    head = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 128))
    state: dict[str, torch.Tensor] = {}
    for name, encoder in (("encoder_q", query), ("encoder_k", key)):
        state.update({f"module.{name}.{k}": v for k, v in encoder.state_dict().items()})
        if with_head:
            state.update({f"module.{name}.fc.{k}": v for k, v in head.state_dict().items()})
    state["module.queue"] = torch.nn.functional.normalize(torch.randn(128, 256), dim=0)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 200, "arch": "resnet20", "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0]}]}}, path)
    return {k: v.clone() for k, v in head.state_dict().items()}


def _checkpoint_spec(tmp_path: Path, ckpt: Path, losses: list[object]) -> Path:
    data = minimal_spec(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    data["teachers"] = {"t": {"arch": "resnet20", "source": "checkpoint",
                              "checkpoint": str(ckpt)}}
    data["grid"] = {"teacher": "t", "student": "resnet20", "loss": losses, "seed": 0}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_moco_v2_checkpoint_teacher_keeps_its_ssl_head(tmp_path: Path) -> None:
    """Issue 12, item 0: SEED / DisCo / BINGO on a checkpoint teacher distil its SSL embedding
    (the MoCo-v2 head of the file), CoSS its raw features; the path is the trial engine's."""
    from losses import ObjectiveContext, build_objective
    from orchestrator.data.datasets import load_dataset
    from orchestrator.engine.group import teacher_needs
    from orchestrator.runtime.preflight import preflight
    from orchestrator.spec.grid import expand
    from orchestrator.spec.load import load_spec
    from orchestrator.stages.teachers import load_frozen_teacher

    ckpt = tmp_path / "moco_v2.pth.tar"
    head = _moco_v2_checkpoint(ckpt)
    spec = load_spec(_checkpoint_spec(tmp_path, ckpt, ["seed", "disco", "bingo", "coss"]))
    trials = expand(spec)
    preflight(spec, trials)  # the head is there: no error
    bundle = load_dataset("digits")
    x = torch.randn(5, 1, 16, 16)
    for trial in trials:
        needs = teacher_needs([trial])
        frozen = load_frozen_teacher(trial.teacher, spec.cache_dir, bundle, needs)
        if trial.loss.name == "coss":
            assert not needs.ssl_head and frozen.ssl_head is None
            continue
        assert needs.ssl_head and frozen.ssl_head is not None, trial.loss.name
        assert frozen.embedding_dim == 128
        features = frozen.features(x)
        expected = torch.nn.functional.linear(
            torch.relu(torch.nn.functional.linear(features, head["0.weight"], head["0.bias"])),
            head["2.weight"], head["2.bias"])
        assert torch.allclose(frozen.embedding(features), expected, atol=1e-5)
        ctx = ObjectiveContext(student_dim=64, teacher_dim=frozen.feature_dim,
                               teacher_embedding_dim=frozen.embedding_dim, num_classes=None,
                               teacher_has_classifier=False, student_has_classifier=False,
                               dataset_size=100)
        objective = build_objective(trial.loss.name, trial.loss.params, ctx)
        student_head = objective.head
        assert isinstance(student_head, torch.nn.Module)
        head_out = student_head(torch.zeros(2, 64))
        assert head_out.shape == (2, 128)  # the student lands in the teacher's SSL space


def test_checkpoint_without_ssl_head_fails_before_anything_runs(tmp_path: Path) -> None:
    ckpt = tmp_path / "backbone_only.pth.tar"
    _moco_v2_checkpoint(ckpt, with_head=False)
    spec = _checkpoint_spec(tmp_path, ckpt, ["coss", {"name": "seed", "queue_size": 64}])
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "teachers.t.checkpoint" in lines[0] and str(ckpt) in lines[0]
    assert "projection head" in lines[0] and "seed" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    # The same file serves objectives that use raw features only.
    from orchestrator.runtime.preflight import preflight
    from orchestrator.spec.grid import expand
    from orchestrator.spec.load import load_spec

    loaded = load_spec(_checkpoint_spec(tmp_path, ckpt, ["coss", "smd"]))
    preflight(loaded, expand(loaded))
