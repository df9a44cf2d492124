"""Transfer evaluation: a frozen backbone on downstream datasets (docs/RECIPES.md,
"Transfer evaluation"; Ericsson, Gouk & Hospedales, CVPR 2021, linear.py; CoSS's kNN mode).

Per dataset: the pooled features of every split, computed once (:func:`features`; a
``cache`` folder keeps them by a content hash of the weights, the dataset and the
transform), then

- ``linear``: for each of the ``grid`` weight decays ``wd = logspace(-6, 5, grid)`` a
  multinomial logistic regression with C = 1/wd on train (:func:`orchestrator.engine.logreg.
  fit_logistic`, all C at once); the best by the validation score (strict ``>``: the earlier,
  larger C wins a tie); a refit on train+val with that C from zero weights; the test score.
  Validation is the official split where the dataset has one, else ``val_fraction`` of train
  (:func:`orchestrator.data.transfer.random_split`), and train+val is then the whole train.
- ``knn``: weighted kNN (:func:`orchestrator.engine.knn.weighted_knn`) of the L2-normalised
  test features against the whole training data (train + val).

Scores are percentages: top-1, or the mean per-class accuracy (:func:`mean_per_class`) for
the datasets Ericsson scores so (Pets, Flowers-102, Caltech-101).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from common.atomic import torch_save
from models.augment import normalise
from models.base import Backbone
from orchestrator.data.transfer import (
    DOWNSTREAM,
    MEAN_PER_CLASS,
    Downstream,
    ImageSplit,
    decode_batches,
    load_downstream,
    random_split,
)
from orchestrator.engine.knn import weighted_knn
from orchestrator.engine.logreg import fit_logistic, predict
from orchestrator.engine.precision import autocast
from orchestrator.spec.config import TransferConfig, TransferDataset

PREFIX = "transfer/"


def weight_decays(count: int) -> Tensor:
    """Ericsson's grid: ``torch.logspace(-6, 5, count)`` (45: a quarter decade apart)."""
    return torch.logspace(-6, 5, count, dtype=torch.float64)


@torch.no_grad()
def mean_per_class(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean over the classes present in ``labels`` of the share of their images predicted
    right, in % (Ericsson's: the confusion matrix's diagonal over its row sums)."""
    hits = torch.zeros(num_classes, dtype=torch.float64)
    totals = torch.zeros(num_classes, dtype=torch.float64)
    labels = labels.cpu()
    totals.index_add_(0, labels, torch.ones(labels.numel(), dtype=torch.float64))
    hits.index_add_(0, labels, (pred.cpu() == labels).double())
    present = totals > 0
    return float(100.0 * (hits[present] / totals[present]).mean())


def score(pred: Tensor, labels: Tensor, num_classes: int, metric: str) -> float:
    if metric == MEAN_PER_CLASS:
        return mean_per_class(pred, labels, num_classes)
    return 100.0 * float((pred.cpu() == labels.cpu()).double().mean())


@dataclass(frozen=True)
class Features:
    """Pooled features (float32) and labels of a dataset's splits; ``val`` None: none
    official (drawn from train by the protocol)."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor] | None
    test: tuple[Tensor, Tensor]
    num_classes: int


@dataclass(frozen=True)
class Extractor:
    """How images become features: the backbone in eval mode, its input normalisation,
    the device and the forward precision."""

    backbone: Backbone
    mean: Tensor
    std: Tensor
    device: torch.device
    precision: str = "auto"

    @torch.no_grad()
    def __call__(self, split: ImageSplit, size: int, resize: int, batch: int,
                 threads: int = 1) -> tuple[Tensor, Tensor]:
        chunks = []
        for images in decode_batches(split, size, resize, batch, threads):
            x = normalise(images.to(self.device).float() / 255.0, self.mean.to(self.device),
                          self.std.to(self.device))
            with autocast(self.device, self.precision):
                chunks.append(self.backbone.forward_features(x).float())
        dim = chunks[0].shape[1] if chunks else 0
        out = torch.cat(chunks) if chunks else torch.zeros(0, dim, device=self.device)
        return out, torch.tensor(list(split.labels), dtype=torch.int64, device=self.device)

    def fingerprint(self) -> str:
        """sha256 of the weights and the normalisation (a features cache key)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.backbone.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy()
                          .tobytes())
        digest.update(repr((self.mean.tolist(), self.std.tolist(), self.precision,
                            self.device.type)).encode())
        return digest.hexdigest()[:24]


def features(extract: Extractor, dataset: TransferDataset, cfg: TransferConfig,
             cache: str | Path | None = None) -> Features:
    """The dataset's features under ``cfg``'s transform; with ``cache``, read from / written
    to ``cache/<hash>.pt`` (the hash of the weights, the dataset and the transform)."""
    path = None
    if cache is not None:
        key = hashlib.sha256(repr((extract.fingerprint(), dataset.name,
                                   str(Path(dataset.root).resolve()), cfg.image_size,
                                   cfg.resize_to)).encode()).hexdigest()[:24]
        path = Path(cache) / f"{key}.pt"
        if path.is_file():
            saved = torch.load(path, map_location=extract.device, weights_only=True)
            return Features(saved["train"], saved["val"], saved["test"], saved["classes"])
    data: Downstream = load_downstream(dataset.name, dataset.root)

    def run(split: ImageSplit) -> tuple[Tensor, Tensor]:
        return extract(split, cfg.image_size, cfg.resize_to, cfg.batch_size, cfg.threads)

    out = Features(run(data.train), None if data.val is None else run(data.val),
                   run(data.test), data.num_classes)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch_save(path, {"train": out.train, "val": out.val, "test": out.test,
                          "classes": out.num_classes})
    return out


def _concat(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])


def _splits(feats: Features, cfg: TransferConfig
            ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, val, train+val) by the protocol's rule."""
    if feats.val is not None:
        return feats.train, feats.val, _concat(feats.train, feats.val)
    x, y = feats.train
    train_idx, val_idx = random_split(x.shape[0], cfg.val_fraction, cfg.seed)
    ti = torch.tensor(train_idx, dtype=torch.int64, device=x.device)
    vi = torch.tensor(val_idx, dtype=torch.int64, device=x.device)
    return (x[ti], y[ti]), (x[vi], y[vi]), feats.train


def select_c(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], num_classes: int,
             metric: str, cs: Tensor, max_iter: int) -> tuple[int, list[float]]:
    """Index of the best C on val (the first of equals) and the val score of every C."""
    fit = fit_logistic(train[0], train[1], num_classes, cs.to(train[0].dtype), max_iter)
    preds = predict(fit, val[0])
    scores = [score(p, val[1], num_classes, metric) for p in preds]
    best = 0
    for j, value in enumerate(scores):
        if value > scores[best]:  # strict: the earlier (larger C) wins a tie
            best = j
    return best, scores


def linear_transfer(feats: Features, cfg: TransferConfig, metric: str) -> dict[str, float]:
    """The protocol's test score and chosen C (module docstring)."""
    train, val, both = _splits(feats, cfg)
    cs = 1.0 / weight_decays(cfg.grid)
    best, _ = select_c(train, val, feats.num_classes, metric, cs, cfg.max_iter)
    final = fit_logistic(both[0], both[1], feats.num_classes,
                         cs[best:best + 1].to(both[0].dtype), cfg.max_iter)
    test = score(predict(final, feats.test[0])[0], feats.test[1], feats.num_classes, metric)
    return {metric: test, "C": float(cs[best])}


def knn_transfer(feats: Features, cfg: TransferConfig) -> dict[str, float]:
    bank = feats.train if feats.val is None else _concat(feats.train, feats.val)
    scores = weighted_knn(F.normalize(bank[0], dim=1), bank[1],
                          F.normalize(feats.test[0], dim=1), feats.test[1], [cfg.k],
                          cfg.temperature, feats.num_classes)
    return {"knn_top1": scores[f"top1_k{cfg.k}"]}


def transfer_metrics(extract: Extractor, cfg: TransferConfig,
                     cache: str | Path | None = None,
                     only: Sequence[str] | None = None) -> dict[str, float]:
    """``transfer/<label>/<metric>`` of every dataset of ``cfg`` (``only``: these labels),
    and their ``transfer/<label>/C`` in linear mode."""
    out: dict[str, float] = {}
    for dataset in cfg.datasets:
        if only is not None and dataset.key not in only:
            continue
        feats = features(extract, dataset, cfg, cache)
        metric = DOWNSTREAM[dataset.name].metric
        values = (linear_transfer(feats, cfg, metric) if cfg.mode == "linear"
                  else knn_transfer(feats, cfg))
        out.update({f"{PREFIX}{dataset.key}/{k}": v for k, v in values.items()})
    return out
