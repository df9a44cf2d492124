"""Every registered objective through the real trial runner (``run_trial``, no Ray).

One YAML spec lists every objective (CompRess in both variants); a tiny supervised teacher
(so that KD and SSKD have logits) is pretrained once per module in a private cache. To keep
the file fast on a 2-core CPU the trials see a fixed 256-image slice of the digits training
split (2 steps of 128 an epoch); the test split stays whole. The data loader is replaced in the
two modules that load it, so the teacher, its neighbour graphs and the trials agree on N.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from losses import objective_names
from losses.sskd import SSKD
from orchestrator.data.datasets import DatasetBundle, Split
from orchestrator.data.datasets import load_dataset as real_load_dataset
from orchestrator.engine import group as group_module
from orchestrator.engine.member import CHECKPOINT
from orchestrator.spec.config import TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages import teachers as teachers_module
from orchestrator.stages.trials import run_trial

TRAIN_IMAGES = 256
SMALL_QUEUE = 1024  # > 2 epochs of 256 keys: a queue that was not restored cannot catch up

# Terms each objective reports (``loss/<term>`` per epoch). Adding an objective to the
# registry without adding it here fails `test_every_objective_is_covered`.
EXPECTED_TERMS: dict[str, set[str]] = {
    "coss": {"co", "ss"},
    "cos": {"co"},
    "cospress": {"sim", "fea"},
    "seed": {"seed"},
    "compress": {"compress"},
    "disco": {"contrast", "mse1", "mse2"},
    "smd": {"smd", "cos"},  # the official warm-up term, weight 1 in epochs 0-1
    "bingo": {"anchor", "neighbour", "mix"},
    "kd": {"kd"},
    "rkd": {"distance", "angle"},
    "pkt": {"pkt"},
    "sskd": {"ce", "kd", "tf_kd", "ss"},
    "mse": {"mse"},
    "cosine": {"cos"},
}
# (objective, variant) cases; CompRess runs both of its variants.
CASES = [(name, "1q" if name == "compress" else None) for name in EXPECTED_TERMS]
CASES.append(("compress", "2q"))


def _small(bundle: DatasetBundle) -> DatasetBundle:
    train = Split(bundle.train.images[:TRAIN_IMAGES].clone(),
                  bundle.train.labels[:TRAIN_IMAGES].clone())
    return DatasetBundle(bundle.name, train, bundle.test, bundle.num_classes, bundle.mean,
                         bundle.std)


def _spec(tmp: Path) -> dict[str, Any]:
    queue = {"queue_size": SMALL_QUEUE}
    # CoSS / CoS: 1/16 of the images anchor an epoch (256 images, as the plain epochs of the
    # other objectives), not the official 16 x 256.
    earlier_epoch = {"epoch_anchors": 0.0625}
    return {
        "name": "objectives",
        "output_dir": str(tmp / "out"),
        "cache_dir": str(tmp / "cache"),
        "dataset": {"name": "digits", "labels": True},
        "teachers": {"tiny_sup": {"arch": "wrn_16_2", "source": "pretrain",
                                  "pretrain": {"recipe": "supervised", "epochs": 1,
                                               "batch_size": 128, "lr": 0.1}}},
        "grid": {
            "teacher": "tiny_sup",
            "student": "resnet20",
            "loss": [
                {"name": "coss", **earlier_epoch},
                {"name": "cos", **earlier_epoch},
                {"name": "cospress"},
                {"name": "seed", **queue},
                {"name": "compress", "variant": ["2q", "1q"], **queue},
                {"name": "disco", **queue},
                {"name": "smd"},
                # warmup 1: the first epoch uses the own key only, the second the bag too
                {"name": "bingo", "warmup_epochs": 1, **queue},
                {"name": "kd"},
                {"name": "rkd"},
                {"name": "pkt"},
                {"name": "sskd", "teacher_head_epochs": 1},
                {"name": "mse"},
                {"name": "cosine"},
            ],
        },
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.05, "augment": "ssl_light"},
        "knn": {"k": [10, 20]},
    }


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str | None],
                                                                     TrialConfig]]:
    tmp = tmp_path_factory.mktemp("objectives")
    small = _small(real_load_dataset("digits"))

    def load(settings: Any, *_: Any) -> DatasetBundle:
        # load_dataset takes the dataset settings (issue 18), a name before
        assert getattr(settings, "name", settings) == "digits"
        return small

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(group_module, "load_dataset", load)
        mp.setattr(teachers_module, "load_dataset", load)
        path = tmp / "objectives.yaml"
        path.write_text(yaml.safe_dump(_spec(tmp)))
        by_case: dict[tuple[str, str | None], TrialConfig] = {}
        for t in expand(load_spec(path)):
            variant = t.loss.yaml_params().get("variant") if t.loss.name == "compress" else None
            by_case[(t.loss.name, variant)] = t
        yield by_case


def _run(config: TrialConfig | dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    reports: list[dict[str, Any]] = []
    final = run_trial(config, reports.append)
    return final, reports


def _with(config: TrialConfig, trial_dir: Path, epochs: int) -> dict[str, Any]:
    data = copy.deepcopy(config.to_dict())
    data["runtime"]["trial_dir"] = str(trial_dir)
    data["train"]["epochs"] = epochs
    return data


def test_every_objective_is_covered() -> None:
    assert set(EXPECTED_TERMS) == set(objective_names())


@pytest.mark.parametrize(("name", "variant"), CASES,
                         ids=[n if v is None else f"{n}-{v}" for n, v in CASES])
def test_objective_runs_in_a_trial(trials: dict[tuple[str, str | None], TrialConfig],
                                   name: str, variant: str | None) -> None:
    final, reports = _run(trials[(name, variant)])
    epochs = [r for r in reports if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1]
    for r in epochs:
        logged = {k.removeprefix("loss/") for k in r if k.startswith("loss/")}
        assert logged == EXPECTED_TERMS[name] | {"total"}, logged
        assert all(math.isfinite(r[f"loss/{t}"]) for t in logged)
        assert r["lr"] > 0 and r["epoch_time_s"] > 0
    assert reports[-1]["kind"] == "final"
    for key in ("knn/top1_k10", "knn/top1_k20", "knn/top5_k10", "teacher_knn/top1_k10",
                "train_time_s"):
        assert key in final and math.isfinite(final[key]), key
    assert 0.0 <= final["knn/top1_k10"] <= 100.0


def _objective_state(trial_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(trial_dir / CHECKPOINT, weights_only=True)
    return dict(state["objective"])


# Stateful objectives (queue buffer to check, or None): a momentum encoder and a queue
# (DisCo, CompRess 2q), and SSKD's teacher SS head trained once in prepare().
RESUME_QUEUES = {"disco": "queue", "compress": "teacher_queue", "sskd": None}


@pytest.mark.parametrize("name", list(RESUME_QUEUES))
def test_resume_restores_objective_state(trials: dict[tuple[str, str | None], TrialConfig],
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         name: str) -> None:
    """1 epoch, then the same trial again with 2 epochs (it resumes from the checkpoint),
    must equal 2 epochs in one go: queue rows, queue pointer, momentum encoder, metrics."""
    config = trials[(name, "2q" if name == "compress" else None)]
    head_was_ready: list[bool] = []
    prepare = SSKD.prepare

    def spy(self: SSKD, *args: Any, **kwargs: Any) -> None:
        head_was_ready.append(bool(self.teacher_head_ready))
        assert kwargs.get("rotate") is not None  # the engine's rotated-copies pipeline
        prepare(self, *args, **kwargs)

    monkeypatch.setattr(SSKD, "prepare", spy)
    straight, straight_reports = _run(_with(config, tmp_path / "straight", 2))

    resumed_dir = tmp_path / "resumed"
    _run(_with(config, resumed_dir, 1))
    after_one = _objective_state(resumed_dir)
    queue = RESUME_QUEUES[name]
    if queue is not None:
        assert int(after_one[f"{queue}.ptr"]) == TRAIN_IMAGES  # 2 steps of 128 enqueued
    resumed, resumed_reports = _run(_with(config, resumed_dir, 2))
    assert [r["epoch"] for r in resumed_reports if r["kind"] == "epoch"] == [2]

    a, b = _objective_state(tmp_path / "straight"), _objective_state(resumed_dir)
    assert a.keys() == b.keys()
    if queue is not None:
        assert int(b[f"{queue}.ptr"]) == 2 * TRAIN_IMAGES
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    straight_epochs = [r for r in straight_reports if r["kind"] == "epoch"]
    resumed_epochs = [r for r in resumed_reports if r["kind"] == "epoch"]
    assert resumed_reports[0]["kind"] == "resumed" and resumed_reports[0][
        "resumed_from_epoch"] == 1 and len(resumed_reports[0]["history"]) == 1
    second = {k: v for k, v in straight_epochs[1].items() if k.startswith("loss/")}
    again = {k: v for k, v in resumed_epochs[0].items() if k.startswith("loss/")}
    assert second == pytest.approx(again, rel=1e-5, abs=1e-6)
    assert straight["knn/top1_k10"] == pytest.approx(resumed["knn/top1_k10"])
    if name == "sskd":  # the resumed trial reuses the checkpointed head, it does not retrain
        assert head_was_ready == [False, False, True]


def test_sskd_steps_get_separately_cropped_rotations(
        trials: dict[tuple[str, str | None], TrialConfig], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the engine, an SSKD batch's four copies of an image are not rotations of one
    another (the official pipeline crops each rotated copy on its own)."""
    seen: list[torch.Tensor] = []
    compute = SSKD.compute

    def spy(self: SSKD, step: Any) -> Any:
        assert step.rotated is not None
        seen.append(step.rotated.detach().cpu())
        return compute(self, step)

    monkeypatch.setattr(SSKD, "compute", spy)
    _run(_with(trials[("sskd", None)], tmp_path / "sskd", 1))
    assert seen and all(x.shape[0] == 4 * 128 for x in seen)
    grouped = seen[0].reshape(128, 4, *seen[0].shape[1:])
    back = torch.stack([torch.rot90(grouped[:, k], -k, dims=(2, 3)) for k in range(4)], dim=1)
    same = [(back[:, k] - back[:, 0]).abs().flatten(1).amax(1) < 1e-4 for k in (1, 2, 3)]
    assert float(torch.stack(same).float().mean()) < 0.5  # ssl_light crops each copy anew
