"""The objective contract and the objective registry.

An objective is an ``nn.Module`` that owns everything trainable or stateful beyond the student
backbone (projection heads, queues, momentum encoders) and turns one batch into named loss
terms. Each term is logged as its own metric; the total is ``sum(weight * term)`` so that every
weight can be a sweep axis (torchdistill / mdistiller style).

Parameters are a frozen :class:`common.fields.Config` dataclass per objective (``Params``), its
constraints declared in the field annotations; the spec loader validates YAML against them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from common.fields import Config, yaml_key
from models.base import Backbone
from models.teacher import TeacherOutputs


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
    generator: torch.Generator | None = None  # the trial's model stream (random state init)


@dataclass
class StepInputs:
    """One training step's data.

    ``views`` are independently augmented views of the same images (``num_views`` of them);
    teacher and student see the same view. ``fetch`` returns freshly augmented images for any
    training-set indices (for objectives that pull extra images, e.g. BINGO's bag neighbours).
    ``neighbours`` is the teacher kNN graph (N x K indices) when the objective asked for it.
    ``rng`` is the trial's model stream: randomness that belongs to the objective (CutMix
    boxes, bag draws) comes from it, never from the global generator. ``rotated`` is SSKD's
    batch when the objective asked for ``rotated_views``: ``4B`` images, row ``4i + k`` image
    ``i`` flipped once, rotated by ``k * 90`` degrees, then cropped on its own (the four copies
    of an image are not rotations of each other).
    """

    views: list[Tensor]
    indices: Tensor
    labels: Tensor | None
    student: Backbone
    teacher: TeacherOutputs
    fetch: Callable[[Tensor], Tensor] | None = None
    neighbours: Tensor | None = None
    epoch: int = 0
    step: int = 0
    rng: torch.Generator | None = None
    rotated: Tensor | None = None


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

    def stacked(self) -> Tensor:
        """``[total, term_1, ...]`` as one detached float32 vector (no host sync): what a
        trial accumulates on the device over an epoch."""
        return torch.stack([self.total.detach().float(),
                            *(v.detach().float() for v in self.terms.values())])

    def names(self) -> list[str]:
        """Metric names in :meth:`stacked` order."""
        return ["loss/total", *(f"loss/{k}" for k in self.terms)]


@dataclass(frozen=True)
class NeighbourBatches:
    """CoSS batches: each anchor followed by ``neighbours`` of its top-``pool`` neighbours;
    ``anchors`` is the share of the training images that anchor once in an epoch (1.0: all,
    the official sampler; an epoch then shows ``(neighbours + 1) x N`` images)."""

    neighbours: int
    pool: int
    anchors: float = 1.0


@dataclass(frozen=True)
class ObjectiveRequirements:
    """What the trial must provide; checked against the spec before anything runs."""

    labels: bool = False  # needs class labels (supervised objectives)
    teacher_classifier: bool = False  # needs teacher logits
    teacher_embedding: bool = False  # uses the teacher's SSL head (SEED, DisCo, BINGO)
    student_classifier: bool = False  # student is built with a classifier
    num_views: int = 1
    min_batch_size: int = 1
    neighbour_batches: NeighbourBatches | None = None  # batches from the teacher kNN graph
    neighbour_graph: int | None = None  # the step reads the top-k graph itself (BINGO: bags)
    rotated_views: bool = False  # StepInputs.rotated: 4 rotated, separately cropped copies

    @property
    def graph_size(self) -> int | None:
        """Neighbours per image the teacher stage must store (None: no graph needed)."""
        sizes = [s for s in (self.neighbour_graph,
                             self.neighbour_batches.pool if self.neighbour_batches else None)
                 if s is not None]
        return max(sizes) if sizes else None


P = TypeVar("P", bound=Config)


class Objective(nn.Module, Generic[P]):
    """Base class. Subclasses set ``name``, ``Params`` (a :class:`Config` dataclass with
    defaults) and implement :meth:`compute`. ``after_step`` runs after the optimiser step
    (momentum encoders, queues).
    """

    name: ClassVar[str]
    Params: ClassVar[type[Config]]
    summary: ClassVar[str] = ""
    # Stateless objectives whose loss terms depend on params only through their weights
    # declare those params here and implement term_weights: trials that differ only in them
    # can run as one stacked (vmapped) model (orchestrator/engine/stacked.py).
    weight_fields: ClassVar[frozenset[str] | None] = None
    params: P

    def __init__(self, params: P, ctx: ObjectiveContext) -> None:
        super().__init__()
        self.params = params
        self.ctx = ctx

    @classmethod
    def requirements(cls, params: P) -> ObjectiveRequirements:
        return ObjectiveRequirements()

    @classmethod
    def term_weights(cls, params: P, epoch: int) -> dict[str, float] | None:
        """Each term's weight at an epoch (None: the objective cannot be stacked)."""
        return None

    def compute(self, step: StepInputs) -> LossTerms:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: StepInputs) -> None:
        return None

    def prepare(self, teacher: TeacherOutputs, train_images: Tensor, train_labels: Tensor | None,
                augment: Callable[[Tensor], Tensor], device: torch.device,
                generator: torch.Generator | None = None,
                rotate: Callable[[Tensor], Tensor] | None = None) -> None:
        """One-off work before training (e.g. SSKD's teacher SS-head fine-tuning); its
        randomness comes from ``generator`` (the trial's model stream). ``augment`` maps stored
        training images to one augmented view, ``rotate`` to the ``4B`` rotated copies of
        :attr:`StepInputs.rotated` (same pipeline as the training steps)."""
        return None


ObjectiveClass = type[Objective[Any]]
OBJECTIVES: dict[str, ObjectiveClass] = {}


def register_objective(cls: type[Objective[P]]) -> type[Objective[P]]:
    if cls.name in OBJECTIVES:
        raise ValueError(f"objective {cls.name!r} registered twice")
    if not issubclass(cls.Params, Config):
        raise TypeError(f"{cls.__name__}.Params must be a common.fields.Config dataclass")
    OBJECTIVES[cls.name] = cls
    return cls


def objective_names() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective(name: str) -> ObjectiveClass:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; allowed: {', '.join(objective_names())}"
        ) from None


def param_fields(name: str) -> dict[str, Any]:
    """YAML parameter names and defaults of an objective (for `ukd losses` and the spec)."""
    cls = get_objective(name)
    return {yaml_key(f.name): f.default for f in dataclasses.fields(cls.Params)}


def make_params(name: str, values: Mapping[str, Any]) -> Config:
    """Build the objective's Params from YAML keys; unknown keys and bad values: ValueError."""
    cls = get_objective(name)
    by_yaml = {yaml_key(f.name): f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(values) - set(by_yaml))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for objective {name!r}; allowed: {sorted(by_yaml)}"
        )
    return cls.Params(**{by_yaml[k]: v for k, v in values.items()})


def params_to_yaml(params: Config) -> dict[str, Any]:
    """Params -> YAML keys with plain values (tuples as lists)."""
    return {yaml_key(k): v for k, v in params.to_dict().items()}


def build_objective(name: str, params: Config | Mapping[str, Any],
                    ctx: ObjectiveContext) -> Objective[Any]:
    resolved = params if isinstance(params, Config) else make_params(name, params)
    return get_objective(name)(resolved, ctx)
