"""Pydantic models of the sweep YAML, built from the config dataclasses' own annotations.

A config dataclass (:class:`common.fields.Config`) declares its fields' types and constraints
once; :func:`config_model` turns it into a pydantic model with ``extra="forbid"``, strict types
(a bool is never a number, a string never an int) and the constraints as field constraints, so
the YAML check, the JSON Schema (``ukd schema``) and direct construction agree.

Grid axes accept one value or a list (:data:`Axis`); a loss entry is a discriminated union
over the registered objectives keyed on ``name``, each parameter an axis of its own.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
)
from pydantic_core import PydanticCustomError

from common.fields import Bounds, Config, FieldInfo, config_fields
from losses import OBJECTIVES, objective_names
from models import model_names
from models.pretrain import PretrainConfig
from orchestrator.data.datasets import dataset_names
from orchestrator.spec.config import (
    DatasetConfig,
    KnnConfig,
    LinearConfig,
    ResourcesConfig,
    TrainConfig,
    TransferConfig,
    TransferDataset,
)

FORBID = ConfigDict(extra="forbid", frozen=True)
_SCALARS: dict[type, Any] = {int: StrictInt, float: StrictFloat, bool: StrictBool,
                             str: StrictStr}


def _bounds_kwargs(bounds: Bounds | None) -> dict[str, float]:
    if bounds is None:
        return {}
    return {k: v for k, v in dataclasses.asdict(bounds).items() if v is not None}


def _scalar_type(kind: type, choices: tuple[str, ...] | None, bounds: Bounds | None) -> Any:
    base = Literal[choices] if choices else _SCALARS.get(kind, kind)
    kw = _bounds_kwargs(bounds)
    return Annotated[base, Field(**kw)] if kw else base  # type: ignore[call-overload]


def field_type(info: FieldInfo) -> Any:
    """The pydantic type of one config field (constraints included)."""
    choices = info.choice.choices if info.choice else None
    if info.kind is tuple:
        item = _scalar_type(info.item or float, choices, info.bounds)
        out: Any = tuple[item, ...]  # type: ignore[valid-type]
    elif info.kind is dict:
        out = dict[StrictStr, _scalar_type(info.item or float, choices, info.bounds)]  # type: ignore[misc]
    else:
        out = _scalar_type(info.kind, choices, info.bounds)
    if info.choice is not None and info.choice.booleans:
        mapping = dict(info.choice.booleans)
        out = Annotated[out, BeforeValidator(
            lambda v: mapping.get(v, v) if isinstance(v, bool) else v,
            json_schema_input_type=out | bool)]
    return out | None if info.optional else out


def config_model(cls: type[Config], *, exclude: tuple[str, ...] = (),
                 optional: tuple[str, ...] = (), name: str | None = None) -> type[BaseModel]:
    """A pydantic model of ``cls``'s fields (YAML keys as aliases); ``optional`` fields
    default to None (filled from elsewhere, e.g. the teacher's seed from train.seed)."""
    fields: dict[str, Any] = {}
    for info in config_fields(cls):
        if info.name in exclude:
            continue
        kind = field_type(info)
        if info.name in optional:
            kind, default = kind | None, None
        elif info.default is dataclasses.MISSING:
            default = ...
        else:
            default = info.default
        fields[info.name] = (kind, Field(default=default, alias=info.key))
    return create_model(name or cls.__name__ + "Spec", __config__=FORBID, **fields)


# ----------------------------------------------------------------------------- axes


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def _as_list_of_lists(value: Any) -> Any:
    """A list-valued parameter: one list is one value, a list of lists sweeps it."""
    if isinstance(value, list) and (not value or isinstance(value[0], list)):
        return value
    return [value]


def _check_axis(values: list[Any]) -> list[Any]:
    if not values:
        raise PydanticCustomError("axis_empty",
                                  "an axis needs at least one value, got an empty list")
    if len({repr(v) for v in values}) != len(values):
        raise PydanticCustomError("axis_duplicate", "duplicate values in {values}",
                                  {"values": str(values)})
    return values


def axis(item: Any, list_valued: bool = False) -> Any:
    """One value or a non-empty list of distinct values, validated as a list."""
    wrap = _as_list_of_lists if list_valued else _as_list
    from pydantic import AfterValidator

    return Annotated[list[item],
                     BeforeValidator(wrap, json_schema_input_type=item | list[item]),
                     AfterValidator(_check_axis)]


# ----------------------------------------------------------------------------- sections
# Static types for mypy under TYPE_CHECKING (what a validated value is); at run time the
# aliases are the pydantic types that validate it (registries read when this module loads).

DatasetSpecModel: Any = config_model(DatasetConfig)
TrainSpecModel: Any = config_model(TrainConfig)
KnnSpecModel: Any = config_model(KnnConfig)
ResourcesSpecModel: Any = config_model(ResourcesConfig)
PretrainSpecModel: Any = config_model(PretrainConfig, exclude=("arch", "in_channels"),
                                      optional=("seed",), name="PretrainSpec")
LinearSpecModel: Any = config_model(LinearConfig, name="LinearSpec")
TransferDatasetSpecModel: Any = config_model(TransferDataset, name="TransferDatasetSpec")
TransferSpecModel: Any = create_model(
    "TransferSpec", __base__=config_model(TransferConfig, exclude=("datasets",),
                                          name="TransferOptionsSpec"),
    datasets=(Annotated[list[TransferDatasetSpecModel], Field(min_length=1)], ...))
# References: the recipe of a run without a teacher; arch, seed and in_channels come from the
# student and the trials' seeds, epochs default to the trials'.
SslOnlySpecModel: Any = config_model(PretrainConfig, exclude=("arch", "in_channels", "seed"),
                                     optional=("epochs",), name="SslOnlySpec")
SupervisedOnlySpecModel: Any = config_model(
    PretrainConfig, exclude=("recipe", "arch", "in_channels", "seed", "temperature", "proj_dim",
                             "queue_size", "key_momentum"),
    optional=("epochs",), name="SupervisedOnlySpec")


def _flag_or_mapping(value: Any) -> Any:
    """``true``: the section with its defaults; ``false``: off."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


def flag_or(model: Any) -> Any:
    """A section that may also be written ``true`` (its defaults) or ``false`` (off)."""
    return Annotated[model | None, BeforeValidator(
        _flag_or_mapping, json_schema_input_type=model | bool | None)]


@functools.cache
def loss_entry_model(name: str) -> type[BaseModel]:
    """``{name: <objective>, <param>: value or list of values, ...}`` for one objective."""
    fields: dict[str, Any] = {"name": (Literal[name], ...)}
    for info in config_fields(OBJECTIVES[name].Params):
        item = field_type(info)
        fields[info.name] = (axis(item, list_valued=info.kind is tuple) | None,
                             Field(default=None, alias=info.key))
    return create_model(f"Loss_{name}", __config__=FORBID, **fields)


def _loss_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def _transfer_shorthand(value: Any) -> Any:
    """A list of datasets: the transfer settings with their defaults."""
    return {"datasets": value} if isinstance(value, list) else value


def _dataset_shorthand(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


_ENTRIES = tuple(loss_entry_model(n) for n in objective_names())

if TYPE_CHECKING:
    ModelName = str
    DatasetField = Any
    PretrainField = Any
    TrainField = Any
    KnnField = Any
    ResourcesField = Any
    LinearField = Any
    TransferField = Any
    SslOnlyField = Any
    SupervisedOnlyField = Any
    StrAxis = list[str]
    ModelAxis = list[str]
    LossAxis = list[Any]
    PositiveIntAxis = list[int]
    SeedAxis = list[int]
    PositiveFloatAxis = list[float]
    NonNegativeFloatAxis = list[float]
else:
    ModelName = Literal[tuple(model_names())]
    DatasetField = Annotated[DatasetSpecModel, BeforeValidator(
        _dataset_shorthand, json_schema_input_type=DatasetSpecModel | Literal[
            tuple(dataset_names())])]
    PretrainField = PretrainSpecModel
    TrainField = TrainSpecModel
    KnnField = KnnSpecModel
    ResourcesField = ResourcesSpecModel
    LinearField = flag_or(LinearSpecModel)
    TransferField = Annotated[TransferSpecModel | None, BeforeValidator(
        _transfer_shorthand,
        json_schema_input_type=TransferSpecModel | list[TransferDatasetSpecModel] | None)]
    SslOnlyField = flag_or(SslOnlySpecModel)
    SupervisedOnlyField = flag_or(SupervisedOnlySpecModel)
    StrAxis = axis(StrictStr)
    ModelAxis = axis(ModelName)
    LossAxis = axis(Annotated[
        Union[_ENTRIES],  # noqa: UP007 - a union over a tuple of registered models
        Field(discriminator="name"),
        BeforeValidator(_loss_entry, json_schema_input_type=Union[
            (*_ENTRIES, Literal[tuple(objective_names())])]),  # a name alone: its defaults
    ])
    PositiveIntAxis = axis(Annotated[StrictInt, Field(gt=0)])
    SeedAxis = axis(Annotated[StrictInt, Field(ge=0)])
    PositiveFloatAxis = axis(Annotated[StrictFloat, Field(gt=0)])
    NonNegativeFloatAxis = axis(Annotated[StrictFloat, Field(ge=0)])


class PretrainTeacherSpec(BaseModel):
    model_config = FORBID
    arch: ModelName
    source: Literal["pretrain"]
    pretrain: PretrainField = Field(default_factory=PretrainSpecModel)


class CheckpointTeacherSpec(BaseModel):
    model_config = FORBID
    arch: ModelName
    source: Literal["checkpoint"]
    checkpoint: StrictStr


class TorchvisionTeacherSpec(BaseModel):
    model_config = FORBID
    arch: ModelName
    source: Literal["torchvision"]
    weights: StrictStr = "DEFAULT"


TeacherSpec = Annotated[
    PretrainTeacherSpec | CheckpointTeacherSpec | TorchvisionTeacherSpec,
    Field(discriminator="source"),
]
TEACHER_SPECS: dict[str, type[BaseModel]] = {"pretrain": PretrainTeacherSpec,
                                             "checkpoint": CheckpointTeacherSpec,
                                             "torchvision": TorchvisionTeacherSpec}


class PairSpec(BaseModel):
    model_config = FORBID
    teacher: StrictStr
    student: ModelName


class GridSpecModel(BaseModel):
    """Every list is an axis: teacher x student (or explicit pairs) x loss (and the loss's own
    parameter axes) x batch_size x seed x lr x epochs x weight_decay."""

    model_config = FORBID
    teacher: StrAxis | None = None
    student: ModelAxis | None = None
    pairs: Annotated[list[PairSpec], Field(min_length=1)] | None = None
    loss: LossAxis
    batch_size: PositiveIntAxis | None = None
    seed: SeedAxis | None = None
    lr: PositiveFloatAxis | None = None
    epochs: PositiveIntAxis | None = None
    weight_decay: NonNegativeFloatAxis | None = None


class EvalSpecModel(BaseModel):
    """How trials are evaluated: kNN (always), the linear probe (``linear``: true or its
    settings), the student's own classifier (``classifier: true``, students with one: KD,
    SSKD); every N epochs too when ``every`` > 0. ``transfer``: downstream datasets (a list,
    or ``{datasets: [...], image_size, mode, ...}``), evaluated once at the end."""

    model_config = FORBID
    every: Annotated[StrictInt, Field(ge=0)] = 0
    knn: KnnField | None = None
    linear: LinearField = None
    classifier: StrictBool = False
    transfer: TransferField = None


class ReferencesSpecModel(BaseModel):
    """Reference rows per student architecture and seed, evaluated like the trials:
    ``random_init`` (the untrained student), ``ssl_only`` (trained by SimCLR / MoCo-v2, no
    teacher; true or the recipe), ``supervised_only`` (cross-entropy alone; needs labels)."""

    model_config = FORBID
    random_init: StrictBool = False
    ssl_only: SslOnlyField = None
    supervised_only: SupervisedOnlyField = None


class SweepSpecModel(BaseModel):
    """A sweep spec file (experiments/*.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ukd sweep spec")
    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9._-]+$")]
    output_dir: StrictStr | None = None
    cache_dir: StrictStr = "runs/.cache"
    dataset: DatasetField
    teachers: Annotated[dict[str, TeacherSpec], Field(min_length=1)]
    grid: GridSpecModel
    train: TrainField = Field(default_factory=TrainSpecModel)
    knn: KnnField | None = None  # the same as eval.knn
    eval: EvalSpecModel = Field(default_factory=EvalSpecModel)
    references: ReferencesSpecModel = Field(default_factory=ReferencesSpecModel)
    resources: ResourcesField = Field(default_factory=ResourcesSpecModel)


TOP_KEYS = tuple(f.alias or n for n, f in SweepSpecModel.model_fields.items())


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a sweep spec (for editors: yaml-language-server)."""
    schema = SweepSpecModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def model_keys(model: Any) -> list[str]:
    """The YAML keys of a model, in declaration order."""
    return [f.alias or n for n, f in model.model_fields.items()]


def unwrap(hint: Any) -> Any:
    """Strip Annotated and Optional around a type."""
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            hint = typing.get_args(hint)[0]
            continue
        if origin is Union or isinstance(hint, type(int | None)):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) == 1:
                hint = args[0]
                continue
        return hint
