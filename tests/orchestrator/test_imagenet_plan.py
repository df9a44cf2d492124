"""experiments/imagenet.yaml plans offline, and ``dataset.classes`` (a class subset such as
ImageNet-100) is validated and applied on a generated image folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.data.datasets import load_dataset, num_classes, train_size
from orchestrator.errors import SpecError, UserInputError
from orchestrator.runtime.preflight import preflight
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.orchestrator.imagefolders import make_folder

ROOT = Path(__file__).resolve().parents[2]
IMAGENET = ROOT / "experiments" / "imagenet.yaml"


def test_imagenet_dry_run_needs_neither_data_nor_checkpoint() -> None:
    result = CliRunner().invoke(app, ["sweep", str(IMAGENET), "--dry-run"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "18 trials" in text and "6 Ray Tune trial(s)" in text
    assert "epoch of coss: neighbour batches of 64 anchors x (1 + 15 of top-31)" in text
    assert "(N = 1,281,167: 20018 steps, 20,498,432 images, 16.0 x N)" in text
    # 3 students x (2 neighbour-batch objectives x 25 x 20,498,432 + 4 plain x 25 x 1,281,024)
    assert f"student-images: {3 * (2 * 25 * 20_498_432 + 4 * 25 * 1_281_024):,} in all" in text
    assert "per-device chunks: train.devices 4" in text
    assert "needs dataset.root: /path/to/ILSVRC2012 (MISSING" in text
    assert "needs teachers.mocov2_r50.checkpoint: /path/to/moco_v2_800ep_pretrain.pth.tar " \
           "(MISSING" in text
    # a real run refuses the placeholder before anything starts
    with pytest.raises(SpecError, match=r"checkpoint.*no such file"):
        load_spec(IMAGENET)


def _spec(tmp_path: Path, dataset: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "name": "subset", "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"), "dataset": dataset,
        "teachers": {"t": {"arch": "resnet8x4", "source": "pretrain",
                           "pretrain": {"recipe": "simclr", "epochs": 1}}},
        "grid": {"teacher": "t", "student": "resnet8x4", "loss": {"name": "cos",
                                                                  "neighbours": 0}},
        "train": {"epochs": 1, "batch_size": 16}}))
    return path


def test_class_subset_of_a_generated_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "images", classes=4, train=5, val=2, sizes=(20, 28))
    (tmp_path / "two.txt").write_text("# the subset\nclass_3\n\nclass_1  # second\n")
    path = _spec(tmp_path, {"name": "imagefolder", "root": str(folder), "image_size": 16,
                            "classes": "two.txt", "storage": "memory", "workers": 0})
    spec = load_spec(path)
    assert spec.dataset.classes == str(tmp_path / "two.txt")  # relative to the spec file
    preflight(spec, expand(spec))
    bundle = load_dataset(spec.dataset)
    assert bundle.num_classes == 2 and num_classes(spec.dataset) == 2
    assert bundle.train.images.shape[0] == 10 == train_size(spec.dataset)
    assert bundle.test.images.shape[0] == 4
    assert sorted(set(bundle.train.labels.tolist())) == [0, 1]  # class_1 -> 0, class_3 -> 1
    full = load_dataset(load_spec(_spec(tmp_path, {"name": "imagefolder",
                                                   "root": str(folder), "image_size": 16,
                                                   "storage": "memory",
                                                   "workers": 0})).dataset)
    # class_1's images are the full folder's class 1 images, in order
    ones = full.train.images[full.train.labels == 1]
    assert (bundle.train.images[bundle.train.labels == 0] == ones).all()
    # the subset is part of the trial id and of the teacher's cache key
    other = expand(load_spec(_spec(tmp_path, {"name": "imagefolder", "root": str(folder),
                                              "image_size": 16})))[0]
    mine = expand(spec)[0]
    assert mine.trial_id != other.trial_id and mine.teacher.key != other.teacher.key


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "no such file"),
    ("\n# nothing\n", "names no class"),
    ("class_0\nclass_0\n", "names the class 'class_0' twice"),
])
def test_bad_class_files_are_refused_by_the_spec(tmp_path: Path, content: str | None,
                                                 fragment: str) -> None:
    folder = make_folder(tmp_path / "images", classes=2, train=1, val=1, sizes=(20, 20))
    if content is not None:
        (tmp_path / "c.txt").write_text(content)
    with pytest.raises(SpecError, match=fragment) as info:
        load_spec(_spec(tmp_path, {"name": "imagefolder", "root": str(folder),
                                   "classes": "c.txt"}))
    assert "dataset.classes" in str(info.value)


def test_a_class_missing_from_the_folder_is_refused_before_ray(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "images", classes=2, train=1, val=1, sizes=(20, 20))
    (tmp_path / "c.txt").write_text("class_0\nclass_9\n")
    spec = load_spec(_spec(tmp_path, {"name": "imagefolder", "root": str(folder),
                                      "classes": "c.txt"}))
    with pytest.raises(UserInputError, match=r"dataset.classes.*'class_9'.*does not have"):
        preflight(spec, expand(spec))
    with pytest.raises(SpecError, match="allowed only for imagefolder and imagenet"):
        load_spec(_spec(tmp_path, {"name": "digits", "classes": "c.txt"}))
