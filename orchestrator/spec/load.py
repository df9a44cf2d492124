"""Sweep spec: the YAML file, validated on load (pydantic, orchestrator/spec/models.py) into
the typed config sections of orchestrator/spec/config.py.

Every rejection is a :class:`SpecError` naming the file, the YAML path of the key and what is
allowed. YAML is read with a ``yaml.SafeLoader`` only; no string in it is ever evaluated.

A spec has fixed settings (``dataset``, ``teachers``, ``train``, ``knn``, ``resources``) and a
``grid`` whose lists are axes: teacher x student (or explicit ``pairs``) x loss (each loss entry
may sweep its own parameters) x batch_size x seed x lr x epochs x weight_decay.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from common.fields import Config, yaml_key
from losses import ObjectiveRequirements, get_objective, make_params
from models.hub import resolve_weights
from models.pretrain import RECIPES, PretrainConfig
from orchestrator.data.class_subset import read_classes
from orchestrator.data.datasets import DATASETS, identity, uses_labels
from orchestrator.data.transfer import check_files
from orchestrator.errors import SpecError, UserInputError
from orchestrator.spec.config import (
    SSL_RECIPES,
    CheckpointSource,
    DatasetConfig,
    EvalConfig,
    KnnConfig,
    LinearConfig,
    PretrainSource,
    ReferencesConfig,
    ResourcesConfig,
    TeacherConfig,
    TeacherSource,
    TorchvisionSource,
    TrainConfig,
    TransferConfig,
    TransferDataset,
)
from orchestrator.spec.models import (
    TEACHER_SPECS,
    TOP_KEYS,
    SweepSpecModel,
    model_keys,
    unwrap,
)


@dataclass(frozen=True)
class LossChoice:
    """One loss entry of the grid: its name and, per parameter (YAML key), the values."""

    name: str
    axes: Mapping[str, tuple[Any, ...]]

    def combos(self) -> list[dict[str, Any]]:
        return product(self.axes)


@dataclass(frozen=True)
class GridSpec:
    pairs: tuple[tuple[str, str], ...]  # (teacher label, student arch), already crossed
    loss: tuple[LossChoice, ...]
    scalars: Mapping[str, tuple[Any, ...]]  # axis -> values (only axes given in the grid)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source_path: Path
    output_dir: Path
    cache_dir: Path
    dataset: DatasetConfig
    teachers: Mapping[str, TeacherConfig]
    grid: GridSpec
    train: TrainConfig
    eval: EvalConfig
    resources: ResourcesConfig
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def output_from_spec(self) -> bool:
        """Whether output_dir is the spec's (or its default), not ``--output``."""
        given = self.raw.get("output_dir")
        from_spec = Path(str(given if given is not None else f"runs/{self.name}"))
        return from_spec.expanduser().resolve() == self.output_dir


# ----------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``5e-4`` as a float (YAML 1.1 wants a dot: ``5.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` with :class:`_Loader` (the same loop as ``yaml.load``)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_spec(path: str | Path, output_dir: str | Path | None = None, *,
              require_files: bool = True) -> SweepSpec:
    """Read and validate a sweep spec; every path in it is made absolute here.

    ``require_files=False`` (``ukd sweep --dry-run``) accepts a checkpoint or a class-subset
    file that is not there yet: the plan can be read on a machine without them (the data
    itself is only checked by preflight, before a real run)."""
    file = Path(path)
    if not file.is_file():
        raise SpecError(file, "", "no such file")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(file, "", f"cannot read the file: {exc}") from None
    try:
        raw = _safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(file, "", f"malformed YAML: {where}{problem}") from None
    return parse_spec(raw, file, output_dir, require_files=require_files)


def parse_spec(raw: Any, file: Path, output_dir: str | Path | None = None, *,
               require_files: bool = True) -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError(file, "", f"expected a mapping with keys {', '.join(TOP_KEYS)}, "
                                  f"got {kind_of(raw)}")
    try:
        model = SweepSpecModel.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # An unknown (or misplaced) key first: it usually explains the other errors.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        path, message = describe_error(first, raw)
        raise SpecError(file, path, message) from None
    return _build(model, raw, file, output_dir, require_files)


# ----------------------------------------------------------------------------- errors

_TYPE_NAMES = {"int": "int", "float": "float", "bool": "bool", "string": "str"}
_RANGE_OPS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
              "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def kind_of(node: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(node),
                                                                          type(node).__name__)


def _yaml_path(loc: tuple[str | int, ...], raw: Any) -> str:
    """``('grid', 'loss', 0, 'lambda')`` -> ``grid.loss[0].lambda``. A value axis given as a
    single value keeps its index (``grid.teacher[0]``); a single loss entry has none."""
    out = ""
    node = raw
    for part in loc:
        if isinstance(part, int):
            if isinstance(node, list):
                node = node[part] if part < len(node) else None
            elif out == "grid.loss":
                continue
            out += f"[{part}]"
            continue
        out = f"{out}.{part}" if out else str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return out


def _strip_tags(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the discriminator values pydantic puts in a union member's location:
    ``teachers.<label>.<source>...`` and ``grid.loss[i].<name>...``."""
    parts = list(loc)
    if len(parts) > 2 and parts[0] == "teachers" and parts[2] in TEACHER_SPECS:
        del parts[2]
    if len(parts) > 3 and parts[:2] == ["grid", "loss"] and isinstance(parts[2], int):
        del parts[3]
    elif len(parts) > 2 and parts[:2] == ["grid", "loss"] and isinstance(parts[2], str):
        del parts[2]  # a single entry, not a list
    return tuple(parts)


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for "allowed: ..." lists)."""
    node: Any = SweepSpecModel
    for part in loc:
        node = unwrap(node)
        origin = typing.get_origin(node)
        if origin is list or origin is tuple:
            node = typing.get_args(node)[0]
            if isinstance(part, int):
                continue
            node = unwrap(node)
        if origin is dict:
            node = typing.get_args(node)[1]
            continue
        members = [unwrap(a) for a in typing.get_args(node)] if typing.get_args(node) else []
        if members and all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
            tagged = [m for m in members if _tag_of(m) == part]
            if tagged:
                node = tagged[0]
                continue
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = {f.alias or n: f for n, f in node.model_fields.items()}
            if part not in fields:
                return None
            node = fields[str(part)].annotation
            continue
        return None
    node = unwrap(node)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _tag_of(model: type[BaseModel]) -> str | None:
    for name in ("source", "name"):
        f = model.model_fields.get(name)
        if f is not None and typing.get_origin(f.annotation) is typing.Literal:
            return str(typing.get_args(f.annotation)[0])
    return None


def _allowed(loc: tuple[str | int, ...]) -> str:
    model = _model_at(loc)
    return ", ".join(model_keys(model)) if model is not None else "see `ukd schema`"


def _expected_list(text: str) -> str:
    """``"'a', 'b' or 'c'"`` (pydantic's wording) -> ``a, b, c``."""
    return ", ".join(p.strip().strip("'") for p in re.split(r",| or ", text) if p.strip())


def _in_config_object(loc: tuple[str | int, ...]) -> int | None:
    """Length of the location of the config object (pretraining recipe, loss entry) that a
    range error inside it is reported at, naming the key; None elsewhere."""
    if len(loc) >= 4 and loc[0] == "teachers" and loc[2] == "pretrain":
        return 3
    if len(loc) >= 3 and loc[:2] == ("grid", "loss"):
        return 3 if isinstance(loc[2], int) else 2
    return None


def describe_error(error: Mapping[str, Any], raw: Any) -> tuple[str, str]:
    """One pydantic error -> (YAML path, message naming what is allowed)."""
    kind = str(error["type"])
    tagged = tuple(error["loc"])
    loc = _strip_tags(tagged)
    value = error.get("input")
    ctx = error.get("ctx") or {}
    path = _yaml_path(loc, raw)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        key = str(loc[-1])
        parent = loc[:-1]
        if len(parent) == 2 and parent[0] == "teachers":
            owners = [s for s, m in TEACHER_SPECS.items() if key in model_keys(m)]
            if owners:
                return path, f"only allowed with source: {', '.join(owners)}"
        return path, f"unknown key {key!r}; allowed: {_allowed(tagged[:-1])}"
    if kind == "missing":
        return path, "required key is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type", "dataclass_type"):
        keys = f" with keys {_allowed(tagged)}" if _model_at(tagged) is not None else ""
        return path, f"expected a mapping{keys}, got {kind_of(value)}"
    if kind == "list_type":
        return path, f"expected a list, got {kind_of(value)}"
    if kind == "too_short":
        return path, f"expected a non-empty list, got {kind_of(value)} {value!r}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = str(ctx.get("discriminator", "")).strip("'")
        tag_path = f"{path}.{key}" if path else key
        if kind == "union_tag_not_found":
            return tag_path, "required key is missing"
        return tag_path, (f"unknown value {ctx.get('tag')!r}; allowed: "
                          f"{_expected_list(str(ctx.get('expected_tags', '')))}")
    if kind == "literal_error":
        return path, (f"unknown value {value!r}; allowed: "
                      f"{_expected_list(str(ctx.get('expected', '')))}")
    prefix = kind.split("_", 1)[0]
    if prefix in _TYPE_NAMES and kind.endswith(("_type", "_parsing", "_from_float")):
        return path, f"expected {_TYPE_NAMES[prefix]}, got {kind_of(value)} {value!r}"
    if kind in _RANGE_OPS:
        op, name = _RANGE_OPS[kind]
        rule = f"{op} {ctx.get(name)}"
        owner = _in_config_object(loc)
        if owner is not None:
            key = next(p for p in loc[owner:] if isinstance(p, str))
            return (_yaml_path(loc[:owner], raw),
                    f"{key} must be {rule}, got {value!r} (allowed: {key} {rule})")
        return path, f"must be {rule}, got {value!r}"
    if kind == "string_pattern_mismatch":
        return path, f"use letters, digits, '-', '_' or '.', got {value!r}"
    message = str(error.get("msg", kind)).removeprefix("Value error, ")
    return path, message


# ----------------------------------------------------------------------------- building


def product(axes: Mapping[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def _config(cls: type[Config], model: BaseModel, file: Path, path: str,
            **extra: Any) -> Any:
    """The config dataclass from its validated model; rules between fields (``check``)
    raise here and are reported at the section."""
    values = {n: getattr(model, n) for n in type(model).model_fields}
    try:
        return cls(**{**values, **extra})
    except ValueError as exc:
        raise SpecError(file, path, str(exc)) from None


def _check_dataset(dataset: DatasetConfig, file: Path, require_files: bool = True) -> None:
    """Image-folder settings against the dataset (the folder itself, and that it holds the
    subset's classes: preflight)."""
    info = DATASETS[dataset.name]
    if dataset.classes is not None:
        if not info.folder:
            raise SpecError(file, "dataset.classes", f"dataset {dataset.name!r} has no class "
                            "folders to choose from; allowed only for imagefolder and imagenet")
        if require_files or Path(dataset.classes).exists():
            try:
                read_classes(dataset.classes)
            except UserInputError as exc:
                raise SpecError(file, "dataset.classes", str(exc)) from None
    if info.folder:
        if dataset.root is None:
            raise SpecError(file, "dataset.root", f"dataset {dataset.name!r} reads an image "
                            "folder; allowed: the folder holding train/<class>/<image> and "
                            "val/<class>/<image>")
        return
    if dataset.image_size not in (None, info.image_size):
        raise SpecError(file, "dataset.image_size", f"dataset {dataset.name!r} has "
                        f"{info.image_size}x{info.image_size} images; allowed: "
                        f"{info.image_size} or leave it out (other sizes: image folders)")
    for key in ("eval_resize",):
        if getattr(dataset, key) is not None:
            raise SpecError(file, f"dataset.{key}", f"dataset {dataset.name!r} is evaluated "
                            "as it is; allowed only for imagefolder and imagenet")


def _build(model: SweepSpecModel, raw: Mapping[str, Any], file: Path,
           output_dir: str | Path | None, require_files: bool = True) -> SweepSpec:
    out = Path(output_dir) if output_dir is not None else Path(model.output_dir or
                                                               f"runs/{model.name}")
    dataset: DatasetConfig = _config(DatasetConfig, model.dataset, file, "dataset")
    if dataset.root is not None:
        dataset = dataclasses.replace(dataset,
                                      root=str(Path(dataset.root).expanduser().resolve()))
    if dataset.classes is not None:  # like a checkpoint: relative to the spec file
        classes = Path(dataset.classes).expanduser()
        dataset = dataclasses.replace(dataset, classes=str(
            (classes if classes.is_absolute() else file.parent / classes).resolve()))
    _check_dataset(dataset, file, require_files)
    train: TrainConfig = _config(TrainConfig, model.train, file, "train")
    if model.knn is not None and model.eval.knn is not None:
        raise SpecError(file, "knn", "give the kNN settings once: `knn` or `eval.knn`")
    knn_path = "knn.k" if model.knn is not None else "eval.knn.k"
    knn_model = model.knn if model.knn is not None else model.eval.knn
    knn: KnnConfig = (KnnConfig() if knn_model is None
                      else _config(KnnConfig, knn_model, file, knn_path))
    resources: ResourcesConfig = _config(ResourcesConfig, model.resources, file, "resources")
    channels = DATASETS[dataset.name].channels
    teachers = {label: TeacherConfig(label, _source(body, label, file, train.seed, channels,
                                                     require_files),
                                     dataset.name, identity(dataset))
                for label, body in model.teachers.items()}
    grid = _grid(model, raw, file, tuple(teachers))
    linear: LinearConfig | None = (None if model.eval.linear is None else
                                   _config(LinearConfig, model.eval.linear, file, "eval.linear"))
    transfer = _transfer(model.eval.transfer, file, channels, require_files)
    epochs = max(grid.scalars.get("epochs", (train.epochs,)))
    references = _references(model.references, file, epochs, channels)
    spec = SweepSpec(
        name=model.name,
        source_path=file.resolve(),
        output_dir=out.expanduser().resolve(),
        cache_dir=Path(model.cache_dir).expanduser().resolve(),
        dataset=dataset,
        teachers=teachers,
        grid=grid,
        train=train,
        eval=EvalConfig(knn=knn, every=model.eval.every, linear=linear,
                        classifier=model.eval.classifier, transfer=transfer),
        resources=resources,
        references=references,
        raw=raw,
    )
    _check_compatibility(file, spec)
    return spec


def _transfer(model: Any, file: Path, channels: int, require_files: bool
              ) -> TransferConfig | None:
    """``eval.transfer``: roots resolved (like dataset.root), every dataset's files there
    (orchestrator/data/transfer.py: one line naming the folder and what it must hold)."""
    if model is None:
        return None
    if channels != 3:
        raise SpecError(file, "eval.transfer", "transfer datasets are RGB; allowed only "
                        "for students of a 3-channel dataset")
    datasets = []
    for i, entry in enumerate(model.datasets):
        path = f"eval.transfer.datasets[{i}]"
        item: TransferDataset = _config(TransferDataset, entry, file, path)
        root = str(Path(item.root).expanduser().resolve())
        item = dataclasses.replace(item, root=root)
        if require_files:
            try:
                check_files(item.name, root)
            except UserInputError as exc:
                raise SpecError(file, f"{path}.root", str(exc)) from None
        datasets.append(item)
    out: TransferConfig = _config(TransferConfig, model, file, "eval.transfer",
                                  datasets=tuple(datasets))
    return out


def _references(model: BaseModel, file: Path, epochs: int, channels: int) -> ReferencesConfig:
    """The ``references:`` section; a recipe's epochs default to the trials' (the most
    epochs where the grid sweeps them); arch and seed are filled per reference run."""
    recipes: dict[str, PretrainConfig | None] = {}
    for kind, recipe in (("ssl_only", None), ("supervised_only", "supervised")):
        body = getattr(model, kind)
        if body is None:
            recipes[kind] = None
            continue
        given = getattr(body, "epochs")  # noqa: B009 - both recipe models have epochs
        extra: dict[str, Any] = {"epochs": given if given is not None else epochs,
                                 "in_channels": channels, "seed": 0}
        if recipe is not None:
            extra["recipe"] = recipe
        config: PretrainConfig = _config(PretrainConfig, body, file, f"references.{kind}",
                                         **extra)
        if kind == "ssl_only" and config.recipe not in SSL_RECIPES:
            raise SpecError(file, "references.ssl_only.recipe",
                            f"unknown value {config.recipe!r}; allowed: "
                            f"{', '.join(SSL_RECIPES)} (the cross-entropy reference is "
                            "references.supervised_only)")
        recipes[kind] = config
    return ReferencesConfig(random_init=bool(getattr(model, "random_init")),  # noqa: B009
                            ssl_only=recipes["ssl_only"],
                            supervised_only=recipes["supervised_only"])


def _source(body: BaseModel, label: str, file: Path, default_seed: int,
            channels: int, require_files: bool = True) -> TeacherSource:
    path = f"teachers.{label}"
    arch = str(getattr(body, "arch"))  # noqa: B009 - every source model has an arch
    if body.__class__ is TEACHER_SPECS["pretrain"]:
        pretrain = getattr(body, "pretrain")  # noqa: B009
        seed = pretrain.seed if pretrain.seed is not None else default_seed
        config = _config(PretrainConfig, pretrain, file, f"{path}.pretrain", arch=arch,
                         in_channels=channels, seed=seed)
        return PretrainSource(arch=arch, pretrain=config)
    if body.__class__ is TEACHER_SPECS["checkpoint"]:
        ckpt = Path(getattr(body, "checkpoint")).expanduser()  # noqa: B009
        ckpt = (ckpt if ckpt.is_absolute() else file.parent / ckpt).resolve()
        if require_files and not ckpt.is_file():
            raise SpecError(file, f"{path}.checkpoint", f"no such file: {ckpt}")
        return CheckpointSource(arch=arch, checkpoint=str(ckpt))
    weights = str(getattr(body, "weights"))  # noqa: B009
    try:
        resolve_weights(arch, weights)
    except ValueError as exc:
        raise SpecError(file, f"{path}.weights", str(exc)) from None
    return TorchvisionSource(arch=arch, weights=weights)


def _grid(model: SweepSpecModel, raw: Mapping[str, Any], file: Path,
          labels: tuple[str, ...]) -> GridSpec:
    g = model.grid
    raw_grid = raw.get("grid", {})

    def check_label(value: str, path: str) -> str:
        if value not in labels:
            raise SpecError(file, path, f"unknown value {value!r}; allowed: {', '.join(labels)}")
        return value

    if g.pairs is not None:
        for key in ("teacher", "student"):
            if key in raw_grid:
                raise SpecError(file, f"grid.{key}", "give either grid.pairs or grid.teacher + "
                                                     "grid.student, not both")
        pairs = tuple((check_label(p.teacher, f"grid.pairs[{i}].teacher"), str(p.student))
                      for i, p in enumerate(g.pairs))
        if len(set(pairs)) != len(pairs):
            raise SpecError(file, "grid.pairs", "duplicate teacher/student pair")
    else:
        for key in ("teacher", "student"):
            if getattr(g, key) is None:
                raise SpecError(file, f"grid.{key}", "required (or give grid.pairs)")
        teachers = [check_label(t, f"grid.teacher[{i}]") for i, t in enumerate(g.teacher or [])]
        pairs = tuple((t, str(s)) for t in teachers for s in g.student or [])
    losses = []
    single = not isinstance(raw_grid.get("loss"), list)
    for i, entry in enumerate(g.loss):
        path = "grid.loss" if single else f"grid.loss[{i}]"
        name = str(entry.name)
        axes = {yaml_key(n): tuple(v) for n in type(entry).model_fields if n != "name"
                if (v := getattr(entry, n)) is not None}
        choice = LossChoice(name, axes)
        for combo in choice.combos():
            try:
                make_params(name, combo)
            except (TypeError, ValueError) as exc:
                raise SpecError(file, path, f"{name}: {exc}") from None
        losses.append(choice)
    scalars = {key: tuple(values) for key in ("batch_size", "seed", "lr", "epochs",
                                              "weight_decay")
               if (values := getattr(g, key)) is not None}
    return GridSpec(pairs=pairs, loss=tuple(losses), scalars=scalars)


def _check_compatibility(file: Path, spec: SweepSpec) -> None:
    """Objective requirements against the dataset, teachers and batch sizes."""
    labelled = uses_labels(spec.dataset)
    for label, teacher in spec.teachers.items():
        source = teacher.source
        if isinstance(source, PretrainSource) and RECIPES[source.pretrain.recipe].needs_labels \
                and not labelled:
            raise SpecError(file, f"teachers.{label}.pretrain.recipe",
                            f"recipe {source.pretrain.recipe!r} trains on class labels, and "
                            f"dataset {spec.dataset.name!r} is used without labels "
                            "(dataset.labels: false)")
    if spec.references.supervised_only is not None and not labelled:
        raise SpecError(file, "references.supervised_only",
                        f"trains the student on class labels, and dataset "
                        f"{spec.dataset.name!r} is used without labels (dataset.labels: false); "
                        "allowed here: random_init, ssl_only")
    if spec.eval.classifier and spec.references.supervised_only is None and not any(
            get_objective(c.name).requirements(make_params(c.name, combo)).student_classifier
            for c in spec.grid.loss for combo in c.combos()):
        raise SpecError(file, "eval.classifier",
                        "no student of the sweep has a classifier to score: allowed with an "
                        "objective that trains one (kd, sskd) or references.supervised_only")
    batch_sizes = spec.grid.scalars.get("batch_size", (spec.train.batch_size,))
    for i, choice in enumerate(spec.grid.loss):
        path = f"grid.loss[{i}]"
        cls = get_objective(choice.name)
        for combo in choice.combos():
            req = cls.requirements(make_params(choice.name, combo))
            if req.labels and not labelled:
                raise SpecError(file, path, f"{choice.name} needs class labels, and dataset "
                                            f"{spec.dataset.name!r} is used without labels")
            if req.teacher_classifier:
                for t_label, _ in spec.grid.pairs:
                    if not spec.teachers[t_label].has_classifier:
                        raise SpecError(file, path,
                                        f"{choice.name} needs a teacher with a classifier; "
                                        f"teacher {t_label!r} has none (use source: pretrain "
                                        "with recipe: supervised, or a classifier checkpoint)")
            for bs in batch_sizes:
                if bs < req.min_batch_size:
                    raise SpecError(file, "grid.batch_size" if "batch_size" in spec.grid.scalars
                                    else "train.batch_size",
                                    f"batch size {bs} is too small for {choice.name} "
                                    f"{combo or ''}: needs at least {req.min_batch_size}")
                _check_devices(file, spec, choice.name, combo, req, bs)
    if spec.train.devices > 1 and spec.resources.fuse == "stack":
        raise SpecError(file, "resources.fuse",
                        f"stack cannot split a step per device (train.devices: "
                        f"{spec.train.devices}); allowed with devices > 1: auto, group, off")


def _check_devices(file: Path, spec: SweepSpec, name: str, combo: Mapping[str, Any],
                   req: ObjectiveRequirements, batch_size: int) -> None:
    """``train.devices`` must split every step into equal per-device chunks of whole anchor
    groups, each large enough for the objective (CoSS's space term needs 2 rows)."""
    devices = spec.train.devices
    if devices == 1:
        return
    nb = req.neighbour_batches
    group = nb.neighbours + 1 if nb is not None else 1
    units = batch_size // group  # anchors (neighbour batches) or images a step
    what = (f"{units} anchors of {group} images" if nb is not None
            else f"{batch_size} images")
    if units % devices:
        raise SpecError(file, "train.devices",
                        f"{name} {combo or ''}: a step of {what} does not split into "
                        f"{devices} equal per-device chunks; use a batch size whose "
                        f"{'anchors' if nb is not None else 'images'} divide by {devices}")
    if units // devices * group < req.min_batch_size:
        raise SpecError(file, "train.devices",
                        f"{name} {combo or ''}: {units // devices * group} images a device is "
                        f"too few; needs at least {req.min_batch_size}")
