"""The objective contract and the objective registry.

An objective is an ``nn.Module`` that owns everything trainable or stateful beyond the student
backbone (projection heads, queues, momentum encoders) and turns one batch into named loss
terms. Each term is logged as its own metric; the total is ``sum(weight * term)`` so that every
weight can be a sweep axis (torchdistill / mdistiller style).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from models.base import Backbone
from models.teacher import FrozenTeacher


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective may know when it is built (dims come from the registry, no forward)."""

    student_dim: int
    teacher_dim: int
    teacher_embedding_dim: int
    num_classes: int | None  # None for unlabelled data
    teacher_has_classifier: bool
    student_has_classifier: bool
    dataset_size: int


@dataclass
class StepInputs:
    """One training step's data.

    ``views`` are independently augmented views of the same images (``num_views`` of them);
    teacher and student see the same view. ``fetch`` returns freshly augmented images for any
    training-set indices (for objectives that pull extra images, e.g. BINGO's bag neighbours).
    ``neighbours`` is the teacher kNN graph (N x K indices) when the objective asked for it.
    """

    views: list[Tensor]
    indices: Tensor
    labels: Tensor | None
    student: Backbone
    teacher: FrozenTeacher
    fetch: Callable[[Tensor], Tensor] | None = None
    neighbours: Tensor | None = None
    epoch: int = 0
    step: int = 0


@dataclass
class LossTerms:
    """Named unweighted terms, their weights, and the weighted total used for backprop."""

    terms: dict[str, Tensor]
    weights: dict[str, float]
    total: Tensor = field(init=False)

    def __post_init__(self) -> None:
        missing = set(self.terms) ^ set(self.weights)
        if missing:
            raise ValueError(f"terms and weights disagree on {sorted(missing)}")
        total = sum(
            (self.weights[k] * v for k, v in self.terms.items() if self.weights[k] != 0.0),
            start=torch.zeros((), device=next(iter(self.terms.values())).device),
        )
        self.total = total

    def as_floats(self) -> dict[str, float]:
        out = {f"loss/{k}": float(v.detach()) for k, v in self.terms.items()}
        out["loss/total"] = float(self.total.detach())
        return out


@dataclass(frozen=True)
class ObjectiveRequirements:
    """What the trial must provide; checked against the spec before anything runs."""

    labels: bool = False  # needs class labels (supervised objectives)
    teacher_classifier: bool = False  # needs teacher logits
    student_classifier: bool = False  # student is built with a classifier
    num_views: int = 1
    min_batch_size: int = 1
    neighbour_batches: bool = False  # batches built from the teacher kNN graph (CoSS)
    neighbour_graph: bool = False  # needs the graph inside the step (BINGO)


class Objective(nn.Module):
    """Base class. Subclasses set ``name``, ``Params`` (a dataclass with defaults) and
    implement :meth:`compute`. ``after_step`` runs after the optimiser step (momentum / queue).
    """

    name: ClassVar[str]
    Params: ClassVar[type[Any]]
    summary: ClassVar[str] = ""

    def __init__(self, params: Any, ctx: ObjectiveContext) -> None:
        super().__init__()
        self.params = params
        self.ctx = ctx

    @classmethod
    def requirements(cls, params: Any) -> ObjectiveRequirements:
        return ObjectiveRequirements()

    def neighbour_sampling(self) -> tuple[int, int] | None:
        """``(neighbours_per_anchor, pool_size)`` for neighbour batches, or ``None``."""
        return None

    def compute(self, step: StepInputs) -> LossTerms:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: StepInputs) -> None:
        return None

    def prepare(self, teacher: FrozenTeacher, train_images: Tensor, train_labels: Tensor | None,
                augment: Callable[[Tensor], Tensor], device: torch.device) -> None:
        """One-off work before training (e.g. SSKD's teacher SS-head fine-tuning)."""
        return None


ObjectiveFactory = type[Objective]
OBJECTIVES: dict[str, ObjectiveFactory] = {}


def register_objective(cls: ObjectiveFactory) -> ObjectiveFactory:
    if cls.name in OBJECTIVES:
        raise ValueError(f"objective {cls.name!r} registered twice")
    if not dataclasses.is_dataclass(cls.Params):
        raise TypeError(f"{cls.__name__}.Params must be a dataclass")
    OBJECTIVES[cls.name] = cls
    return cls


def objective_names() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective(name: str) -> ObjectiveFactory:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; allowed: {', '.join(objective_names())}"
        ) from None


def _yaml_key(field_name: str) -> str:
    # Python keywords such as ``lambda`` are spelled ``lambda_`` in the dataclass.
    return field_name[:-1] if field_name.endswith("_") else field_name


def param_fields(name: str) -> dict[str, Any]:
    """YAML parameter names and defaults of an objective (for `ukd losses` and the spec)."""
    cls = get_objective(name)
    return {_yaml_key(f.name): f.default for f in dataclasses.fields(cls.Params)}


def make_params(name: str, values: Mapping[str, Any]) -> Any:
    """Build the objective's Params from YAML keys; unknown keys and bad values: ValueError."""
    cls = get_objective(name)
    by_yaml = {_yaml_key(f.name): f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(values) - set(by_yaml))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for objective {name!r}; allowed: {sorted(by_yaml)}"
        )
    return cls.Params(**{by_yaml[k]: v for k, v in values.items()})


def build_objective(name: str, values: Mapping[str, Any], ctx: ObjectiveContext) -> Objective:
    return get_objective(name)(make_params(name, values), ctx)
