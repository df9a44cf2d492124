"""Evaluators beside kNN: the linear probe and the classifier's accuracy, their spec keys and
their run params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from models.base import Backbone
from orchestrator.data.datasets import DatasetBundle, Split
from orchestrator.engine.evaluators.base import (
    EVALUATORS,
    EvalContext,
    enabled_evaluators,
    evaluate_model,
    evaluator_names,
)
from orchestrator.engine.evaluators.linear import accuracy, linear_probe
from orchestrator.spec.config import EvalConfig, LinearConfig, flat_params, trial_identity
from orchestrator.spec.grid import expand
from orchestrator.spec.load import parse_spec
from tests.orchestrator.specs import minimal_spec


def _separable(n_per_class: int, classes: int, dim: int, seed: int
               ) -> tuple[Tensor, Tensor]:
    """Clusters around well separated class centres (margin far above the spread)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, dim) * 10.0
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centres[labels] + 0.5 * torch.randn(labels.numel(), dim, generator=gen)
    return features, labels


def test_linear_probe_is_exact_on_a_linearly_separable_set() -> None:
    train_x, train_y = _separable(40, 6, 16, seed=0)
    test_x, test_y = _separable(25, 6, 16, seed=1)
    # Shift and scale every dimension: the probe standardises with the train split's stats.
    train_x, test_x = train_x * 3.0 + 7.0, test_x * 3.0 + 7.0
    for cfg in (LinearConfig(), LinearConfig(batch_size=0, epochs=50)):
        scores = linear_probe(train_x, train_y, test_x, test_y, 6, cfg, seed=0)
        assert scores == {"top1": 100.0, "top5": 100.0}, cfg


def test_linear_probe_is_near_chance_on_shuffled_labels() -> None:
    gen = torch.Generator().manual_seed(3)
    classes = 10
    train_x = torch.randn(600, 32, generator=gen)
    test_x = torch.randn(1000, 32, generator=gen)
    train_y = torch.randint(0, classes, (600,), generator=gen)
    test_y = torch.randint(0, classes, (1000,), generator=gen)
    scores = linear_probe(train_x, train_y, test_x, test_y, classes,
                          LinearConfig(epochs=30), seed=0)
    # chance is 10 % top-1 and 50 % top-5; 1,000 test samples: a std of about 1 and 1.6 %
    assert 5.0 <= scores["top1"] <= 15.0, scores
    assert 42.0 <= scores["top5"] <= 58.0, scores


def test_linear_probe_is_deterministic_for_a_seed() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 8, generator=gen)
    y = (x[:, 0] + 0.8 * torch.randn(300, generator=gen) > 0).long()
    cfg = LinearConfig(epochs=5, batch_size=32)
    first = linear_probe(x[:200], y[:200], x[200:], y[200:], 2, cfg, seed=7)
    assert linear_probe(x[:200], y[:200], x[200:], y[200:], 2, cfg, seed=7) == first


def test_accuracy_top5_over_at_most_the_classes() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    assert accuracy(logits, torch.tensor([0, 0])) == {"top1": 50.0, "top5": 100.0}


# ----------------------------------------------------------------------------- classifier


class _Pixels(Backbone):
    """Features: the first C pixels (the image / 255, mean 0 and std 1); a classifier with
    identity weights, so the logits are those pixels."""

    def __init__(self, classes: int) -> None:
        super().__init__(classes, classes)
        head = self.classifier
        assert isinstance(head, nn.Linear)
        with torch.no_grad():
            head.weight.copy_(torch.eye(classes))
            head.bias.zero_()

    def forward_features(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :self.feature_dim]


def _bundle(test_images: Tensor, test_labels: Tensor, classes: int) -> DatasetBundle:
    train = Split(test_images.clone(), test_labels.clone())
    return DatasetBundle("fake", train, Split(test_images, test_labels), classes,
                         torch.zeros(1), torch.ones(1))


def _images(winners: list[int], classes: int) -> Tensor:
    """One image per entry: class ``w`` scores highest, then w+1, ... w-1 lowest."""
    rows = []
    for w in winners:
        values = torch.zeros(classes)
        for rank in range(classes):
            values[(w + rank) % classes] = 250 - 40 * rank
        rows.append(values)
    flat = torch.stack(rows)
    return torch.cat([flat, torch.zeros(len(winners), 16 - classes)], 1).view(-1, 1, 4, 4) \
        .to(torch.uint8)


def test_classifier_accuracy_of_a_known_model() -> None:
    classes = 6
    winners = [0, 1, 2, 3, 4, 5, 0, 1]
    # 5 right; 2 second in the ranking (top-5 hits); 1 ranked last (a miss at top-5 too)
    labels = [*winners[:5], (winners[5] + 1) % 6, (winners[6] + 1) % 6, (winners[7] - 1) % 6]
    images = _images(winners, classes)
    bundle = _bundle(images, torch.tensor(labels), classes)
    model = _Pixels(classes)
    ctx = EvalContext(EvalConfig(classifier=True), model, bundle, bundle.train.images,
                      torch.device("cpu"))
    scores = EVALUATORS["classifier"](ctx)
    assert scores == {"classifier/top1": 62.5, "classifier/top5": 87.5}
    own = model.forward_logits(model.forward_features(images.float() / 255)).argmax(1)
    assert 100.0 * float((own == torch.tensor(labels)).float().mean()) == 62.5
    # evaluate_model runs kNN and the classifier; the model is back in train mode after
    model.train()
    out = evaluate_model(ctx)
    assert {"knn/top1_k10", "classifier/top1", "classifier/top5"} <= set(out)
    assert "linear/top1" not in out and model.training


def test_a_model_without_classifier_has_no_classifier_metric() -> None:
    class _NoHead(Backbone):
        def __init__(self) -> None:
            super().__init__(4, None)
            self.proj = nn.Identity()

        def forward_features(self, x: Tensor) -> Tensor:
            return x.flatten(1)[:, :4]

    images = _images([0, 1, 2, 3], 4)
    bundle = _bundle(images, torch.tensor([0, 1, 2, 3]), 4)
    ctx = EvalContext(EvalConfig(classifier=True, linear=LinearConfig(epochs=20)), _NoHead(),
                      bundle, bundle.train.images, torch.device("cpu"))
    assert evaluator_names(ctx.evaluation, False) == ["knn", "linear"]
    assert EVALUATORS["classifier"](ctx) == {}
    out = evaluate_model(ctx)
    assert out["linear/top1"] == 100.0 and "classifier/top1" not in out


# ----------------------------------------------------------------------------- spec


def _spec(**overrides: Any) -> Any:
    return parse_spec(minimal_spec(**overrides), Path("spec.yaml"))


def test_eval_section_linear_and_classifier() -> None:
    spec = _spec(eval={"linear": {"epochs": 7, "lr": 0.2}, "every": 2},
                 grid={"teacher": "t", "student": "resnet20", "loss": ["cos", "kd"],
                       "seed": [0]},
                 teachers={"t": {"arch": "resnet20", "source": "pretrain",
                                 "pretrain": {"recipe": "supervised", "epochs": 1}}})
    assert spec.eval.linear == LinearConfig(epochs=7, lr=0.2) and spec.eval.every == 2
    assert _spec(eval={"linear": True}).eval.linear == LinearConfig()
    assert _spec(eval={"linear": False}).eval.linear is None
    trials = expand(spec)
    cos = next(t for t in trials if t.loss.name == "cos")
    kd = next(t for t in trials if t.loss.name == "kd")
    assert enabled_evaluators(cos) == ["knn", "linear"] == enabled_evaluators(kd)
    classified = _spec(eval={"classifier": True}, grid=spec.raw["grid"],
                       teachers=spec.raw["teachers"])
    by_name = {t.loss.name: t for t in expand(classified)}
    assert enabled_evaluators(by_name["kd"]) == ["knn", "classifier"]
    assert enabled_evaluators(by_name["cos"]) == ["knn"]
    flat = flat_params(cos)
    assert flat["linear.epochs"] == "7" and flat["linear.lr"] == "0.2"
    assert flat_params(by_name["kd"])["eval.classifier"] == "True"


def test_evaluators_left_off_keep_the_trial_ids() -> None:
    """Sweeps that use no linear probe and no classifier keep the ids they had."""
    from common.fields import plain
    from common.hashing import content_hash

    trial = expand(_spec())[0]
    # The fields the train and dataset sections had before later settings (train.devices,
    # the image-folder dataset keys) joined them at values that keep the ids.
    dataset = {k: v for k, v in trial.dataset.to_dict().items()
               if k in ("name", "root", "download", "labels")}
    dataset["labels"] = True if dataset["labels"] is None else dataset["labels"]  # as before
    train = {k: v for k, v in trial.train.to_dict().items() if k != "devices"}
    old = content_hash({"teacher": trial.teacher.key, "student": trial.student.arch,
                        "loss": {"name": trial.loss.name, **trial.loss.yaml_params()},
                        "train": train, "dataset": dataset,
                        "eval": {"knn": plain(trial.eval.knn), "every": 0}})
    assert trial.trial_id == old
    with_probe = EvalConfig(linear=LinearConfig())
    assert trial_identity(trial.dataset, trial.teacher, trial.student, trial.loss, trial.train,
                          with_probe) != old
    assert "linear.epochs" not in flat_params(trial)


@pytest.mark.parametrize(("overrides", "where", "fragment"), [
    ({"eval": {"linear": {"epochs": 0}}}, "eval.linear.epochs", "> 0"),
    ({"eval": {"linear": {"optimiser": "adam"}}}, "eval.linear.optimiser",
     "allowed: epochs, batch_size, lr, momentum, weight_decay"),
    ({"eval": {"classifier": True}}, "eval.classifier", "kd, sskd"),
    ({"eval": {"classifier": "yes"}}, "eval.classifier", "expected bool"),
])
def test_bad_eval_settings(overrides: dict[str, Any], where: str, fragment: str) -> None:
    from orchestrator.errors import SpecError

    with pytest.raises(SpecError) as info:
        _spec(**overrides)
    assert f"at `{where}`" in str(info.value) and fragment in str(info.value), info.value
