"""Teacher pretraining recipes: config validation, learning on digits, determinism."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import models.pretrain as pretrain_module
from models import build_model
from models.augment import normalise
from models.base import Backbone
from models.heads import mlp_dims
from models.pretrain import RECIPES, PretrainConfig, nt_xent, pretrain_teacher
from tests.models.conftest import Digits

CPU = torch.device("cpu")


def knn_top1(model: Backbone, d: Digits, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted cosine kNN (InstDisc / DINO): neighbours vote with exp(sim / T)."""
    model.eval()
    with torch.no_grad():
        train = F.normalize(model(normalise(d.train_x.float() / 255, d.mean, d.std)), dim=1)
        test = F.normalize(model(normalise(d.test_x.float() / 255, d.mean, d.std)), dim=1)
    sim, idx = (test @ train.T).topk(k, dim=1)
    votes = torch.zeros(len(test), 10).scatter_add_(1, d.train_y[idx], (sim / temperature).exp())
    return float((votes.argmax(1) == d.test_y).float().mean())


def _changed(a: Backbone, b: Backbone) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return any(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


def _init_of(cfg: PretrainConfig, num_classes: int | None = None) -> Backbone:
    torch.manual_seed(cfg.seed)
    return build_model(cfg.arch, num_classes, cfg.in_channels)


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_auto_augment() -> None:
    assert set(RECIPES) == {"simclr", "mocov2", "supervised"}
    assert PretrainConfig().augment == "ssl"
    assert PretrainConfig(recipe="supervised").augment == "crop_flip"
    assert PretrainConfig(augment="ssl_light").augment == "ssl_light"


@pytest.mark.parametrize(
    "bad",
    [
        {"recipe": "byol"}, {"arch": "resnet1"}, {"augment": "strong"}, {"epochs": 0},
        {"batch_size": 1}, {"lr": 0.0}, {"weight_decay": -1.0}, {"momentum": 1.0},
        {"temperature": 0.0}, {"proj_dim": 0}, {"queue_size": 0}, {"key_momentum": 1.0},
        {"in_channels": 0}, {"epochs": 2.5}, {"seed": "1"}, {"epochs": True},
    ],
)  # fmt: skip
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        PretrainConfig(**bad)  # type: ignore[arg-type]


def test_content_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    base = PretrainConfig(arch="resnet20", lr=1)
    assert base.lr == 1.0 and isinstance(base.lr, float)
    h = base.content_hash()
    assert len(h) == 16 and int(h, 16) >= 0
    assert PretrainConfig(arch="resnet20", lr=1.0).content_hash() == h
    assert PretrainConfig(arch="resnet20", lr=1.0, augment="ssl").content_hash() == h  # auto
    assert PretrainConfig(arch="resnet20", lr=1.0, seed=1).content_hash() != h
    monkeypatch.setattr(pretrain_module, "RECIPE_VERSION", pretrain_module.RECIPE_VERSION + 1)
    assert base.content_hash() != h  # a changed recipe never reuses a cached teacher


def test_nt_xent_prefers_matching_views() -> None:
    z = F.normalize(torch.randn(8, 16), dim=1)
    aligned = nt_xent(torch.cat([z, z]), 0.2)
    shuffled = nt_xent(torch.cat([z, z[torch.randperm(8)]]), 0.2)
    assert aligned < shuffled


def test_input_validation(digits: Digits) -> None:
    cfg = PretrainConfig(arch="resnet20", epochs=1, batch_size=8)
    x = digits.train_x[:16]
    with pytest.raises(ValueError, match="uint8"):
        pretrain_teacher(cfg, x.float(), None, digits.mean, digits.std, None, CPU)
    with pytest.raises(ValueError, match="in_channels=1"):
        pretrain_teacher(
            PretrainConfig(arch="resnet20", in_channels=1),
            x,
            None,
            digits.mean,
            digits.std,
            None,
            CPU,
        )
    sup = PretrainConfig(recipe="supervised", arch="resnet20", epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="needs labels"):
        pretrain_teacher(sup, x, None, digits.mean, digits.std, 10, CPU)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        pretrain_teacher(sup, x, digits.train_y[:16] + 5, digits.mean, digits.std, 5, CPU)


# ----------------------------------------------------------------------------- training


def test_simclr_learns_digits(digits: Digits) -> None:
    """A few SimCLR epochs on 16x16 digits: weighted kNN well above chance (10%).

    A random-init network already reaches 86-93% on digits (depending on the seed), so the
    threshold mostly guards against collapse; the falling loss shows that it learns.
    """
    cfg = PretrainConfig(
        recipe="simclr",
        arch="resnet20",
        epochs=4,
        batch_size=64,
        lr=0.06,
        temperature=0.2,
        augment="ssl_light",
        seed=0,
    )
    before = knn_top1(_init_of(cfg), digits)
    log: list[tuple[int, dict[str, float]]] = []
    start = time.perf_counter()
    backbone, head = pretrain_teacher(
        cfg,
        digits.train_x,
        None,
        digits.mean,
        digits.std,
        None,
        CPU,
        lambda e, m: log.append((e, m)),
    )
    seconds = time.perf_counter() - start
    after = knn_top1(backbone, digits)
    print(f"simclr digits kNN top-1: init {before:.3f} -> trained {after:.3f} in {seconds:.1f}s")
    assert [e for e, _ in log] == [1, 2, 3, 4]
    assert set(log[0][1]) == {"loss", "lr", "epoch_time_s"}
    assert log[-1][1]["loss"] < log[0][1]["loss"]
    assert log[0][1]["lr"] == pytest.approx(0.06) and log[-1][1]["lr"] < 0.06
    assert backbone.classifier is None and head is not None and mlp_dims(head) == [64, 64, 128]
    assert after > 0.6 and after > before - 0.02


def test_mocov2_one_epoch(digits: Digits) -> None:
    cfg = PretrainConfig(
        recipe="mocov2",
        arch="resnet20",
        epochs=1,
        batch_size=64,
        queue_size=128,
        proj_dim=32,
        seed=3,
    )
    log: list[dict[str, float]] = []
    backbone, head = pretrain_teacher(
        cfg,
        digits.train_x[:256],
        None,
        digits.mean,
        digits.std,
        None,
        CPU,
        lambda e, m: log.append(m),
    )
    assert _changed(backbone, _init_of(cfg))
    assert head is not None and mlp_dims(head) == [64, 64, 32]
    assert len(log) == 1 and log[0]["loss"] > 0


def test_mocov2_queue_is_capped_for_tiny_data(digits: Digits) -> None:
    cfg = PretrainConfig(recipe="mocov2", arch="resnet20", epochs=1, batch_size=32, queue_size=4096)
    with pytest.warns(UserWarning, match="queue_size 4096"):
        pretrain_teacher(cfg, digits.train_x[:64], None, digits.mean, digits.std, None, CPU)


def test_supervised_one_epoch(digits: Digits) -> None:
    cfg = PretrainConfig(recipe="supervised", arch="resnet20", epochs=1, batch_size=64, lr=0.05)
    x, y = digits.train_x[:256], digits.train_y[:256]
    backbone, head = pretrain_teacher(cfg, x, y, digits.mean, digits.std, 10, CPU)
    assert head is None and backbone.classifier is not None
    assert _changed(backbone, _init_of(cfg, 10))
    with torch.no_grad():
        assert backbone.forward_logits(backbone(x[:4].float())).shape == (4, 10)


def _run(cfg: PretrainConfig, x: Tensor, d: Digits) -> dict[str, Tensor]:
    backbone, head = pretrain_teacher(cfg, x, None, d.mean, d.std, None, CPU)
    assert head is not None
    return {**backbone.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}


@pytest.mark.parametrize("recipe", ["simclr", "mocov2"])
def test_deterministic_for_a_seed(digits: Digits, recipe: str) -> None:
    cfg = PretrainConfig(
        recipe=recipe, arch="resnet20", epochs=1, batch_size=32, queue_size=32, seed=7
    )
    x = digits.train_x[:96]
    rng = torch.get_rng_state()
    a = _run(cfg, x, digits)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is untouched
    b = _run(cfg, x, digits)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _run(PretrainConfig(**{**cfg.to_dict(), "seed": 8}), x, digits)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
