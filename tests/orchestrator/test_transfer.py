"""Transfer evaluation (orchestrator/engine/transfer.py, logreg.py, data/transfer.py): the
batched logistic regression against scikit-learn, the per-class metric by hand, the split
rule, a DTD stand-in through torchvision's class, and the spec's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from models import build_model
from orchestrator.data.transfer import (
    check_files,
    decode_batches,
    load_downstream,
    random_split,
)
from orchestrator.engine.logreg import fit_logistic, predict
from orchestrator.engine.transfer import (
    Extractor,
    Features,
    linear_transfer,
    mean_per_class,
    select_c,
    transfer_metrics,
    weight_decays,
)
from orchestrator.errors import SpecError, UserInputError
from orchestrator.spec.config import TransferConfig, TransferDataset
from orchestrator.spec.load import parse_spec
from tests.orchestrator.specs import minimal_spec
from tests.orchestrator.transferdata import dtd_standin, transfer_folder


def _blobs(n: int, d: int, k: int, seed: int, spread: float = 1.5
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=gen)
    y = torch.randint(0, k, (n,), generator=gen)
    return centres, centres[y] + spread * torch.randn(n, d, generator=gen), y


@pytest.mark.parametrize("k", [2, 5])
def test_the_batched_fit_equals_scikit_learn_at_every_c(k: int) -> None:
    centres, x, y = _blobs(300, 12, k, seed=k)
    gen = torch.Generator().manual_seed(99)
    yt = torch.randint(0, k, (300,), generator=gen)
    xt = centres[yt] + 1.5 * torch.randn(300, 12, generator=gen)
    cs = 1.0 / weight_decays(45)
    fit = fit_logistic(x.double(), y, k, cs)
    pred = predict(fit, xt.double())
    for j in range(0, 45, 4):
        # scikit-learn fits two classes by the binary loss: the multinomial optimum has
        # w1 = -w0, whose penalty 1/2 (|w0|^2 + |w1|^2) is 1/4 |w1 - w0|^2, so it is the
        # binary problem at 2C with coef = w1 - w0.
        c = float(cs[j]) * (2.0 if k == 2 else 1.0)
        ref = LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit(x.numpy(), y.numpy())
        ours = 100.0 * float((pred[j] == yt).double().mean())
        theirs = 100.0 * float((ref.predict(xt.numpy()) == yt.numpy()).mean())
        assert abs(ours - theirs) <= 0.5, (float(cs[j]), ours, theirs)
        if float(cs[j]) <= 10.0:  # well-posed: the same minimiser (weights up to a shift)
            weight = fit.weight[j].numpy()
            if k == 2:
                assert np.allclose(weight[1] - weight[0], ref.coef_[0], atol=2e-3)
            else:
                assert np.allclose(weight - weight.mean(0), ref.coef_ - ref.coef_.mean(0),
                                   atol=2e-3)


def test_mean_per_class_by_hand() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    pred = torch.tensor([0, 0, 1, 2, 1, 0, 2])
    # class 0: 2/4, class 1: 1/1, class 2: 1/2 -> (0.5 + 1 + 0.5) / 3; top-1 would be 4/7
    assert mean_per_class(pred, labels, 4) == pytest.approx(100.0 * 2.0 / 3.0)


def test_the_random_validation_split_is_ericssons() -> None:
    train, val = random_split(10, 0.2, 0)
    indices = list(range(10))
    np.random.seed(0)
    np.random.shuffle(indices)  # linear.py get_train_valid_loader
    assert val == indices[:2] and train == indices[2:]
    assert random_split(7, 0.2, 0)[1] == random_split(7, 0.2, 0)[1]
    assert len(random_split(7, 0.2, 0)[1]) == 1  # floor(1.4)


def test_a_tie_on_validation_keeps_the_larger_c() -> None:
    # Separable data: every C above some value scores 100 % on val; the first (largest) wins.
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]]).double()
    y = torch.tensor([0, 0, 1, 1])
    cs = torch.tensor([100.0, 10.0, 1.0], dtype=torch.float64)
    best, scores = select_c((x, y), (x, y), 2, "top1", cs, 200)
    assert scores == [100.0, 100.0, 100.0] and best == 0


def test_linear_transfer_uses_the_official_val_split_when_there_is_one() -> None:
    _, x, y = _blobs(120, 6, 3, seed=1, spread=0.3)
    feats = Features((x[:60], y[:60]), (x[60:90], y[60:90]), (x[90:], y[90:]), 3)
    out = linear_transfer(feats, TransferConfig((TransferDataset("dtd", "/x"),), grid=5),
                          "top1")
    assert out["top1"] == 100.0 and out["C"] in (1.0 / weight_decays(5)).tolist()


def test_the_dtd_standin_loads_through_torchvision_with_its_splits(tmp_path: Path) -> None:
    root = dtd_standin(tmp_path, classes=3, per_split=4)
    data = load_downstream("dtd", root)
    assert (len(data.train), len(data.val or []), len(data.test)) == (12, 12, 12)
    assert data.val is not None and sorted(set(data.val.labels)) == [0, 1, 2]
    assert data.train.image(0).mode == "RGB"


def test_decode_threads_change_no_batch(tmp_path: Path) -> None:
    data = load_downstream("dtd", dtd_standin(tmp_path, classes=3, per_split=3))
    alone = list(decode_batches(data.train, 24, 28, 4, 1))
    threaded = list(decode_batches(data.train, 24, 28, 4, 3))
    assert [b.shape[0] for b in alone] == [4, 4, 1]
    assert all(torch.equal(a, b) for a, b in zip(alone, threaded, strict=True))


def test_transfer_metrics_on_the_standin_and_a_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dtd = dtd_standin(tmp_path / "dtd", classes=3, per_split=4)
    folder = transfer_folder(tmp_path / "pics", classes=2, train=10, test=5)
    cfg = TransferConfig((TransferDataset("dtd", str(dtd)),
                          TransferDataset("imagefolder", str(folder))),
                         image_size=32, grid=5, max_iter=50)
    model = build_model("resnet20", in_channels=3).eval()
    extract = Extractor(model, torch.tensor([0.5] * 3), torch.tensor([0.25] * 3),
                        torch.device("cpu"))
    cache = tmp_path / "cache"
    out = transfer_metrics(extract, cfg, cache)
    assert set(out) == {"transfer/dtd/top1", "transfer/dtd/C", "transfer/pics/top1",
                        "transfer/pics/C"}
    assert all(0.0 <= out[k] <= 100.0 for k in out if k.endswith("top1"))
    assert len(list(cache.glob("*.pt"))) == 2
    assert transfer_metrics(extract, cfg, cache) == out  # from the cached features
    knn = transfer_metrics(extract, TransferConfig(cfg.datasets, image_size=32, mode="knn",
                                                   k=3), None)
    assert set(knn) == {"transfer/dtd/knn_top1", "transfer/pics/knn_top1"}


def test_a_caltech_standin_splits_30_images_per_class_for_training(tmp_path: Path) -> None:
    from PIL import Image

    base = tmp_path / "caltech101" / "101_ObjectCategories"
    for name, count in (("BACKGROUND_Google", 2), ("ant", 33), ("bee", 31)):
        (base / name).mkdir(parents=True)
        for i in range(1, count + 1):
            Image.new("L", (12, 10), i).save(base / name / f"image_{i:04d}.jpg")
    data = load_downstream("caltech101", tmp_path)
    assert data.num_classes == 2 and data.val is None
    assert sorted(data.train.labels) == [0] * 30 + [1] * 30
    assert sorted(data.test.labels) == [0, 0, 0, 1]
    assert data.test.image(0).mode == "RGB"  # grey JPEGs converted


@pytest.mark.parametrize(("name", "layout", "expected"), [
    ("stl10", {"stl10_binary/train_X.bin": "", "stl10_binary/train_y.bin": "",
               "stl10_binary/test_X.bin": "", "stl10_binary/test_y.bin": ""},
     "lacks unlabeled_X.bin"),
    ("caltech101", {"caltech101/101_ObjectCategories/BACKGROUND_Google/": None},
     "lacks 101_ObjectCategories/<class>/ folders"),
    ("caltech101", {"caltech101/101_ObjectCategories/faces/": None},
     "lacks 101_ObjectCategories/BACKGROUND_Google"),
    ("cifar10", {}, "lacks data_batch_1"),
    ("flowers102", {"flowers-102/jpg/": None, "flowers-102/setid.mat": ""},
     "lacks imagelabels.mat"),
    ("imagefolder", {"train/a/x.txt": ""}, "lacks train/<class>/<image>"),
    ("imagefolder", {"train/a/x.png": "", "val/b/y.png": ""}, "lacks train/b/ (a class of val/)"),
])
def test_missing_files_are_named_before_anything_runs(tmp_path: Path, name: str,
                                                      layout: dict[str, str | None],
                                                      expected: str) -> None:
    for rel, text in layout.items():
        path = tmp_path / rel
        if text is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if name == "imagefolder":
        (tmp_path / "val").mkdir(exist_ok=True)
    with pytest.raises(UserInputError) as info:
        check_files(name, tmp_path)
    message = str(info.value)
    assert expected in message and "\n" not in message and "expected there" in message


def _spec(tmp_path: Path, transfer: object) -> dict[str, object]:
    spec = minimal_spec(dataset={"name": "imagefolder", "root": str(
        transfer_folder(tmp_path / "main", classes=2, train=3, test=0, val=0) )})
    spec["eval"] = {"transfer": transfer}
    return spec


def test_the_spec_reads_a_list_or_settings(tmp_path: Path) -> None:
    folder = transfer_folder(tmp_path / "down", classes=2, train=3, test=2)
    for value in ([{"name": "imagefolder", "root": str(folder)}],
                  {"datasets": [{"name": "imagefolder", "root": str(folder)}],
                   "image_size": 32, "mode": "knn"}):
        spec = parse_spec(_spec(tmp_path, value), tmp_path / "s.yaml")
        transfer = spec.eval.transfer
        assert transfer is not None and transfer.datasets[0].key == "down"
        assert transfer.datasets[0].root == str(folder.resolve())


@pytest.mark.parametrize(("value", "where"), [
    ([{"name": "dtd", "root": "/nonexistent/dtd"}], "eval.transfer.datasets[0].root"),
    ([{"name": "mnist", "root": "/x"}], "eval.transfer"),
    ({"datasets": [], "mode": "linear"}, "eval.transfer"),
])
def test_the_spec_refuses_bad_transfer_settings(tmp_path: Path, value: object,
                                                where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(tmp_path, value), tmp_path / "s.yaml")
    assert where in str(info.value) and "\n" not in str(info.value)
