"""Sweep spec: the YAML file, validated on load into frozen dataclasses.

Every rejection is a :class:`SpecError` naming the file, the YAML path of the key and what is
allowed. YAML is read with ``yaml.safe_load`` only; no string in it is ever evaluated.

A spec has fixed settings (``dataset``, ``teachers``, ``train``, ``knn``, ``resources``) and a
``grid`` whose lists are axes: teacher x student (or explicit ``pairs``) x loss (each loss entry
may sweep its own parameters) x batch_size x seed x lr x epochs x weight_decay.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from losses import get_objective, make_params, objective_names, param_fields
from models import model_names
from models.augment import AUGMENT_PRESETS
from models.hub import resolve_weights
from models.pretrain import RECIPES, PretrainConfig
from orchestrator.datasets import DATASETS, dataset_names
from orchestrator.errors import SpecError

TEACHER_SOURCES = ("pretrain", "checkpoint", "torchvision")
SCHEDULES = ("cosine", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")
# Grid axes besides teacher/student/pairs/loss, and the train field each one overrides.
SCALAR_AXES: dict[str, type] = {
    "batch_size": int,
    "seed": int,
    "lr": float,
    "epochs": int,
    "weight_decay": float,
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str | None = None
    download: bool = False
    labels: bool = True  # may trials use training labels? (kNN evaluation always does)


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher by label. ``pretrain`` holds PretrainConfig fields (arch and seed included)."""

    label: str
    arch: str
    source: str
    pretrain: Mapping[str, Any] | None = None
    checkpoint: str | None = None
    weights: str | None = None


@dataclass(frozen=True)
class LossChoice:
    """One loss entry of the grid: its name and, per parameter, the values to sweep."""

    name: str
    axes: Mapping[str, tuple[Any, ...]]


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)  # fractions of epochs (150/180/210 of 240)
    gamma: float = 0.1
    augment: str = "crop_flip"
    seed: int = 0


@dataclass(frozen=True)
class KnnSpec:
    k: tuple[int, ...] = (10, 20, 200)
    temperature: float = 0.07
    batch_size: int = 512


@dataclass(frozen=True)
class ResourcesSpec:
    cpu: float = 1.0
    gpu: float = 0.0
    max_concurrent: int = 0  # 0: as many as resources allow
    retries: int = 0
    device: str = "auto"
    threads: int = 1  # torch intra-op threads per trial
    stage_cpu: float = 1.0  # CPUs for each teacher stage task (its torch threads too)


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
    dataset: DatasetSpec
    teachers: Mapping[str, TeacherSpec]
    grid: GridSpec
    train: TrainSpec
    knn: KnnSpec
    resources: ResourcesSpec
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)


# ----------------------------------------------------------------------------- helpers


class _Reader:
    """Walks the YAML tree, raising SpecError with the file and YAML path."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, path: str, message: str) -> SpecError:
        return SpecError(self.file, path, message)

    def mapping(self, node: Any, path: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise self.fail(path, f"expected a mapping with keys {', '.join(allowed)}, "
                                  f"got {_kind(node)}")
        for key in node:
            if key not in allowed:
                raise self.fail(_join(path, str(key)),
                                f"unknown key {key!r}; allowed: {', '.join(allowed)}")
        for key in required:
            if key not in node:
                raise self.fail(_join(path, key), "required key is missing")
        return node

    def scalar(self, node: Any, path: str, kind: type, *, positive: bool = False,
               non_negative: bool = False, choices: tuple[str, ...] | None = None) -> Any:
        value = _coerce(node, kind)
        if value is None:
            raise self.fail(path, f"expected {kind.__name__}, got {_kind(node)} {node!r}")
        if choices is not None and value not in choices:
            raise self.fail(path, f"unknown value {value!r}; allowed: {', '.join(choices)}")
        if positive and not value > 0:
            raise self.fail(path, f"must be > 0, got {value!r}")
        if non_negative and not value >= 0:
            raise self.fail(path, f"must be >= 0, got {value!r}")
        return value

    def axis(self, node: Any, path: str, parse: Callable[[Any, str], Any]) -> tuple[Any, ...]:
        values = node if isinstance(node, list) else [node]
        if not values:
            raise self.fail(path, "an axis needs at least one value, got an empty list")
        parsed = tuple(parse(v, f"{path}[{i}]") for i, v in enumerate(values))
        if len(set(map(repr, parsed))) != len(parsed):
            raise self.fail(path, f"duplicate values in {list(parsed)}")
        return parsed


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(node: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(node),
                                                                          type(node).__name__)


def _coerce(value: Any, kind: type) -> Any:
    """YAML scalar -> kind, or None when it does not fit. Ints pass as floats; bools never
    pass as numbers; '5e-4' (PyYAML reads it as a string) passes as a float."""
    if isinstance(value, bool):
        return value if kind is bool else None
    if kind is float:
        if isinstance(value, int | float):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, str):
            try:
                parsed = float(value)
            except ValueError:
                return None
            return parsed if math.isfinite(parsed) else None
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    if kind is str:
        return value if isinstance(value, str) and value else None
    return None


def _dataclass_values(reader: _Reader, cls: type, node: Any, path: str,
                      skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a mapping against a dataclass's fields (types from the defaults)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    reader.mapping(node, path, tuple(fields))
    out: dict[str, Any] = {}
    for key, value in node.items():
        default = fields[key].default
        out[key] = _typed_like(reader, default, value, _join(path, key))
    return out


def _typed_like(reader: _Reader, default: Any, value: Any, path: str) -> Any:
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise reader.fail(path, f"expected a list, got {_kind(value)}")
        inner = type(default[0]) if default else float
        return tuple(reader.scalar(v, f"{path}[{i}]", inner) for i, v in enumerate(value))
    kind = type(default) if default is not None and default is not dataclasses.MISSING else str
    return reader.scalar(value, path, kind)


# ----------------------------------------------------------------------------- sections

TOP_KEYS = ("name", "output_dir", "cache_dir", "dataset", "teachers", "grid", "train", "knn",
            "resources")


def load_spec(path: str | Path, output_dir: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep spec; every path in it is made absolute here."""
    file = Path(path)
    if not file.is_file():
        raise SpecError(file, "", "no such file")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(file, "", f"cannot read the file: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(file, "", f"malformed YAML: {where}{problem}") from None
    return parse_spec(raw, file, output_dir)


def parse_spec(raw: Any, file: Path, output_dir: str | Path | None = None) -> SweepSpec:
    r = _Reader(file)
    top = r.mapping(raw, "", TOP_KEYS, required=("name", "dataset", "teachers", "grid"))
    name = r.scalar(top["name"], "name", str)
    if not all(c.isalnum() or c in "-_." for c in name):
        raise r.fail("name", f"use letters, digits, '-', '_' or '.', got {name!r}")
    out = Path(output_dir) if output_dir is not None else Path(top.get("output_dir",
                                                                       f"runs/{name}"))
    cache = Path(top.get("cache_dir", "runs/.cache"))
    dataset = _dataset(r, top["dataset"])
    train = _train(r, top.get("train", {}))
    teachers = _teachers(r, top["teachers"], train.seed)
    grid = _grid(r, top["grid"], teachers)
    spec = SweepSpec(
        name=name,
        source_path=file.resolve(),
        output_dir=out.expanduser().resolve(),
        cache_dir=cache.expanduser().resolve(),
        dataset=dataset,
        teachers=teachers,
        grid=grid,
        train=train,
        knn=_knn(r, top.get("knn", {})),
        resources=_resources(r, top.get("resources", {})),
        raw=raw,
    )
    _check_compatibility(r, spec)
    return spec


def _dataset(r: _Reader, node: Any) -> DatasetSpec:
    if isinstance(node, str):
        node = {"name": node}
    d = r.mapping(node, "dataset", ("name", "root", "download", "labels"), required=("name",))
    name = r.scalar(d["name"], "dataset.name", str, choices=tuple(dataset_names()))
    root = d.get("root")
    if root is not None:
        root = str(Path(r.scalar(root, "dataset.root", str)).expanduser().resolve())
    download = r.scalar(d.get("download", False), "dataset.download", bool)
    labels = r.scalar(d.get("labels", True), "dataset.labels", bool)
    return DatasetSpec(name=name, root=root, download=download, labels=labels)


def _teachers(r: _Reader, node: Any, default_seed: int) -> dict[str, TeacherSpec]:
    if not isinstance(node, dict) or not node:
        raise r.fail("teachers", "expected a non-empty mapping of teacher label -> definition")
    out: dict[str, TeacherSpec] = {}
    for label, body in node.items():
        path = f"teachers.{label}"
        t = r.mapping(body, path, ("arch", "source", "pretrain", "checkpoint", "weights"),
                      required=("arch", "source"))
        arch = r.scalar(t["arch"], f"{path}.arch", str, choices=tuple(model_names()))
        source = r.scalar(t["source"], f"{path}.source", str, choices=TEACHER_SOURCES)
        for key, allowed_with in _SOURCE_OF.items():
            if key in t and allowed_with != source:
                raise r.fail(f"{path}.{key}", f"only allowed with source: {_SOURCE_OF[key]}")
        pretrain = None
        checkpoint = None
        weights = None
        if source == "pretrain":
            pretrain = _pretrain(r, t.get("pretrain", {}), f"{path}.pretrain", arch, default_seed)
        elif source == "checkpoint":
            if "checkpoint" not in t:
                raise r.fail(f"{path}.checkpoint", "required with source: checkpoint")
            ckpt = Path(r.scalar(t["checkpoint"], f"{path}.checkpoint", str)).expanduser()
            ckpt = ckpt if ckpt.is_absolute() else (r.file.parent / ckpt)
            ckpt = ckpt.resolve()
            if not ckpt.is_file():
                raise r.fail(f"{path}.checkpoint", f"no such file: {ckpt}")
            checkpoint = str(ckpt)
        else:
            weights = r.scalar(t.get("weights", "DEFAULT"), f"{path}.weights", str)
            try:
                resolve_weights(arch, weights)
            except ValueError as exc:
                raise r.fail(f"{path}.weights", str(exc)) from None
        out[str(label)] = TeacherSpec(str(label), arch, source, pretrain, checkpoint, weights)
    return out


_SOURCE_OF = {"pretrain": "pretrain", "checkpoint": "checkpoint", "weights": "torchvision"}


def _pretrain(r: _Reader, node: Any, path: str, arch: str, default_seed: int) -> dict[str, Any]:
    values = _dataclass_values(r, PretrainConfig, node or {}, path, skip=("arch", "in_channels"))
    if "recipe" in values and values["recipe"] not in RECIPES:
        raise r.fail(f"{path}.recipe",
                     f"unknown recipe {values['recipe']!r}; allowed: {', '.join(sorted(RECIPES))}")
    if "augment" in values and values["augment"] not in AUGMENT_PRESETS:
        raise r.fail(f"{path}.augment", f"unknown augment preset {values['augment']!r}; "
                                        f"allowed: {', '.join(AUGMENT_PRESETS)}")
    values.setdefault("seed", default_seed)
    try:
        PretrainConfig(arch=arch, **values)
    except (TypeError, ValueError) as exc:
        raise r.fail(path, str(exc)) from None
    return values


def _train(r: _Reader, node: Any) -> TrainSpec:
    values = _dataclass_values(r, TrainSpec, node or {}, "train")
    spec = TrainSpec(**values)
    for key in ("epochs", "batch_size", "lr", "gamma"):
        if not getattr(spec, key) > 0:
            raise r.fail(f"train.{key}", f"must be > 0, got {getattr(spec, key)!r}")
    for key in ("momentum", "weight_decay"):
        if getattr(spec, key) < 0:
            raise r.fail(f"train.{key}", f"must be >= 0, got {getattr(spec, key)!r}")
    if spec.schedule not in SCHEDULES:
        raise r.fail("train.schedule", f"unknown value {spec.schedule!r}; "
                                       f"allowed: {', '.join(SCHEDULES)}")
    if spec.augment not in AUGMENT_PRESETS:
        raise r.fail("train.augment", f"unknown augment preset {spec.augment!r}; "
                                      f"allowed: {', '.join(AUGMENT_PRESETS)}")
    if any(not 0 < m < 1 for m in spec.milestones):
        raise r.fail("train.milestones", "milestones are fractions of the epochs, in (0, 1)")
    return spec


def _knn(r: _Reader, node: Any) -> KnnSpec:
    values = _dataclass_values(r, KnnSpec, node or {}, "knn")
    spec = KnnSpec(**values)
    if not spec.k or any(k <= 0 for k in spec.k):
        raise r.fail("knn.k", f"need one or more positive k, got {list(spec.k)}")
    if spec.temperature <= 0 or spec.batch_size <= 0:
        raise r.fail("knn", "temperature and batch_size must be > 0")
    return spec


def _resources(r: _Reader, node: Any) -> ResourcesSpec:
    values = _dataclass_values(r, ResourcesSpec, node or {}, "resources")
    spec = ResourcesSpec(**values)
    for key in ("cpu", "stage_cpu"):
        if getattr(spec, key) <= 0:
            raise r.fail(f"resources.{key}", f"must be > 0, got {getattr(spec, key)}")
    if not 0 <= spec.gpu:
        raise r.fail("resources.gpu", f"must be >= 0, got {spec.gpu}")
    for key in ("max_concurrent", "retries"):
        if getattr(spec, key) < 0:
            raise r.fail(f"resources.{key}", f"must be >= 0, got {getattr(spec, key)}")
    if spec.threads <= 0:
        raise r.fail("resources.threads", f"must be > 0, got {spec.threads}")
    if spec.device not in DEVICES:
        raise r.fail("resources.device", f"unknown value {spec.device!r}; "
                                         f"allowed: {', '.join(DEVICES)}")
    return spec


GRID_KEYS = ("teacher", "student", "pairs", "loss", *SCALAR_AXES)


def _grid(r: _Reader, node: Any, teachers: Mapping[str, TeacherSpec]) -> GridSpec:
    g = r.mapping(node, "grid", GRID_KEYS, required=("loss",))
    labels = tuple(teachers)
    archs = tuple(model_names())

    def teacher_label(v: Any, p: str) -> str:
        return str(r.scalar(v, p, str, choices=labels))

    def student_arch(v: Any, p: str) -> str:
        return str(r.scalar(v, p, str, choices=archs))

    if "pairs" in g:
        for key in ("teacher", "student"):
            if key in g:
                raise r.fail(f"grid.{key}", "give either grid.pairs or grid.teacher + "
                                            "grid.student, not both")
        raw_pairs = g["pairs"]
        if not isinstance(raw_pairs, list) or not raw_pairs:
            raise r.fail("grid.pairs", "expected a non-empty list of {teacher, student}")
        pairs = []
        for i, item in enumerate(raw_pairs):
            p = f"grid.pairs[{i}]"
            m = r.mapping(item, p, ("teacher", "student"), required=("teacher", "student"))
            pairs.append((teacher_label(m["teacher"], f"{p}.teacher"),
                          student_arch(m["student"], f"{p}.student")))
        if len(set(pairs)) != len(pairs):
            raise r.fail("grid.pairs", "duplicate teacher/student pair")
        pair_tuple = tuple(pairs)
    else:
        for key in ("teacher", "student"):
            if key not in g:
                raise r.fail(f"grid.{key}", "required (or give grid.pairs)")
        t_axis = r.axis(g["teacher"], "grid.teacher", teacher_label)
        s_axis = r.axis(g["student"], "grid.student", student_arch)
        pair_tuple = tuple((t, s) for t in t_axis for s in s_axis)
    losses = _loss_axis(r, g["loss"])
    scalars: dict[str, tuple[Any, ...]] = {}
    for key, kind in SCALAR_AXES.items():
        if key in g:
            positive = key not in ("seed", "weight_decay")
            parse = functools.partial(_scalar_value, r, kind, positive)
            scalars[key] = r.axis(g[key], f"grid.{key}", parse)
    return GridSpec(pairs=pair_tuple, loss=losses, scalars=scalars)


def _scalar_value(r: _Reader, kind: type, positive: bool, value: Any, path: str) -> Any:
    return r.scalar(value, path, kind, positive=positive, non_negative=not positive)


def _loss_axis(r: _Reader, node: Any) -> tuple[LossChoice, ...]:
    entries = node if isinstance(node, list) else [node]
    if not entries:
        raise r.fail("grid.loss", "an axis needs at least one value, got an empty list")
    choices = []
    for i, entry in enumerate(entries):
        path = f"grid.loss[{i}]" if isinstance(node, list) else "grid.loss"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise r.fail(path, "expected a loss name or a mapping with `name` and parameters")
        name = r.scalar(entry["name"], f"{path}.name", str, choices=tuple(objective_names()))
        defaults = param_fields(name)
        r.mapping(entry, path, ("name", *defaults))
        axes: dict[str, tuple[Any, ...]] = {}
        for key, value in entry.items():
            if key == "name":
                continue
            default = defaults[key]
            if isinstance(default, tuple) and not (
                    isinstance(value, list) and value and isinstance(value[0], list)):
                value = [value]  # a list-valued parameter: a list of lists sweeps it
            parse = functools.partial(_typed_like, r, default)
            axes[key] = r.axis(value, f"{path}.{key}", parse)
        for combo in _product(axes):
            try:
                make_params(name, combo)
            except (TypeError, ValueError) as exc:
                raise r.fail(path, f"{name}: {exc}") from None
        choices.append(LossChoice(name=name, axes=axes))
    return tuple(choices)


def _product(axes: Mapping[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def _check_compatibility(r: _Reader, spec: SweepSpec) -> None:
    """Objective requirements against the dataset, teachers and batch sizes."""
    info = DATASETS[spec.dataset.name]
    labelled = info.has_labels and spec.dataset.labels
    for label, teacher in spec.teachers.items():
        recipe = (teacher.pretrain or {}).get("recipe")
        if teacher.source == "pretrain" and recipe and RECIPES[recipe].needs_labels \
                and not labelled:
            raise r.fail(f"teachers.{label}.pretrain.recipe",
                         f"recipe {recipe!r} trains on class labels, and dataset "
                         f"{spec.dataset.name!r} is used without labels (dataset.labels: false)")
    batch_sizes = spec.grid.scalars.get("batch_size", (spec.train.batch_size,))
    for i, choice in enumerate(spec.grid.loss):
        path = f"grid.loss[{i}]"
        cls = get_objective(choice.name)
        for combo in _product(choice.axes):
            req = cls.requirements(make_params(choice.name, combo))
            if req.labels and not labelled:
                raise r.fail(path, f"{choice.name} needs class labels, and dataset "
                                   f"{spec.dataset.name!r} is used without labels")
            if req.teacher_classifier:
                for t_label, _ in spec.grid.pairs:
                    t = spec.teachers[t_label]
                    if not _teacher_has_classifier(t):
                        raise r.fail(path, f"{choice.name} needs a teacher with a classifier; "
                                           f"teacher {t_label!r} has none (use source: "
                                           "pretrain with recipe: supervised, or a classifier "
                                           "checkpoint)")
            for bs in batch_sizes:
                if bs < req.min_batch_size:
                    raise r.fail("grid.batch_size" if "batch_size" in spec.grid.scalars
                                 else "train.batch_size",
                                 f"batch size {bs} is too small for {choice.name} "
                                 f"{combo or ''}: needs at least {req.min_batch_size}")


def _teacher_has_classifier(t: TeacherSpec) -> bool:
    """Pretrained teachers have one only from the supervised recipe; a checkpoint is checked
    again when it is loaded (its classifier keys decide)."""
    if t.source == "pretrain":
        default = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}["recipe"]
        return (t.pretrain or {}).get("recipe", default) == "supervised"
    return t.source == "checkpoint"
