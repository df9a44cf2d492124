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
    from orchestrator.grid import expand
    from orchestrator.preflight import preflight
    from orchestrator.spec import load_spec

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
