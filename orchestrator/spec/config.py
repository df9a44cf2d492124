"""The typed trial contract: everything one trial needs, as frozen dataclasses.

The spec loader (orchestrator/spec/load.py) validates the YAML into these sections, the grid
(orchestrator/spec/grid.py) crosses them into :class:`TrialConfig` objects, and the trial runner
reads them as they are -- no string keys, no casts. The module needs neither pydantic nor Ray:
the trial engine and the benchmarks import it on machines that have only torch.

:func:`flat_params` is the one flattener of a trial: MLflow params, ``trials.yaml`` and the
report's expected cells all come from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from common.fields import Bounds, Choice, Config, plain, rebuild
from common.hashing import content_hash
from losses import ObjectiveRequirements, get_objective, make_params, params_to_yaml
from models import model_names
from models.augment import AUGMENT_PRESETS
from models.pretrain import PretrainConfig
from orchestrator.data.datasets import dataset_names, uses_labels
from orchestrator.data.transfer import downstream_names

SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 on CUDA, fp32 on CPU; bf16: on both
DEVICES = ("auto", "cpu", "cuda")
# How trials that share a batch stream run: stacked into one model per student architecture
# (torch.func), as members of one group (one data pipeline and teacher pass), or each alone.
FUSE_LEVELS = ("auto", "stack", "group", "off")
STORAGES = ("auto", "memory", "stream")  # dataset.storage
DECODERS = ("cpu", "gpu")  # dataset.decode: where a streamed folder's mocov2 views decode


def augment_names() -> tuple[str, ...]:
    return tuple(AUGMENT_PRESETS)


def _dataset_names() -> tuple[str, ...]:
    return tuple(dataset_names())


def _model_names() -> tuple[str, ...]:
    return tuple(model_names())


@dataclass(frozen=True)
class DatasetConfig(Config):
    """``labels``: may trials use training labels (kNN evaluation always does)? None: the
    dataset's default (bundled: yes, image folders: no). ``image_size``, ``eval_resize``,
    ``storage``, ``workers`` and ``prefetch`` are for image folders
    (orchestrator/data/datasets.py): the size images are read at, the evaluation transform's
    Resize, decoded into memory or streamed from disk (``auto``: by size), decode worker
    processes and batches decoded ahead (neither changes a batch), and ``decode: gpu``:
    on CUDA, a streamed folder's ``mocov2`` views are decoded by batched nvJPEG --
    ``gpu_share`` of each batch's images (its first ones), the decode workers the rest.
    ``classes`` (image folders): a file naming the classes to use, one a line
    (orchestrator/data/class_subset.py; e.g. ImageNet-100)."""

    name: Annotated[str, Choice(_dataset_names)]
    root: str | None = None
    download: bool = False
    labels: bool | None = None
    image_size: Annotated[int | None, Bounds(ge=8)] = None
    eval_resize: Annotated[int | None, Bounds(ge=8)] = None
    storage: Annotated[str, Choice(STORAGES)] = "auto"
    workers: Annotated[int, Bounds(ge=0)] = 2
    prefetch: Annotated[int, Bounds(ge=1)] = 2
    decode: Annotated[str, Choice(DECODERS)] = "cpu"
    gpu_share: Annotated[float, Bounds(gt=0, le=1)] = 1.0
    classes: str | None = None  # a file of class names: the subset to use (absolute path)

    def check(self) -> None:
        if self.gpu_share < 1 and self.decode != "gpu":
            raise ValueError("gpu_share splits decode: gpu's batches between nvJPEG and the "
                             "decode workers; set decode: gpu, or leave gpu_share out")

    def identity(self) -> dict[str, Any]:
        """What decides a trial's data: the settings less those that change no batch
        (storage, workers, prefetch) and less unset sizes, labels resolved (a bundled
        dataset's trial ids are those of before these settings existed)."""
        out = {k: v for k, v in self.to_dict().items()
               if k not in ("storage", "workers", "prefetch") and
               not (k in ("image_size", "eval_resize", "classes") and v is None) and
               not (k == "decode" and v == "cpu") and not (k == "gpu_share" and v == 1)}
        out["labels"] = uses_labels(self)
        return out


@dataclass(frozen=True)
class PretrainSource(Config):
    """A teacher the sweep pretrains itself (cached by the resolved config's hash)."""

    arch: Annotated[str, Choice(_model_names)]
    pretrain: PretrainConfig
    source: Literal["pretrain"] = "pretrain"

    def identity(self) -> dict[str, Any]:
        return {"source": self.source, "pretrain": self.pretrain.content_hash()}


@dataclass(frozen=True)
class CheckpointSource(Config):
    """A teacher loaded from a checkpoint file (ukd's own format or third-party weights)."""

    arch: Annotated[str, Choice(_model_names)]
    checkpoint: str  # absolute path
    source: Literal["checkpoint"] = "checkpoint"

    def identity(self) -> dict[str, Any]:
        return {"source": self.source, "arch": self.arch, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class TorchvisionSource(Config):
    """A teacher with torchvision's pretrained weights (by enum member name)."""

    arch: Annotated[str, Choice(_model_names)]
    weights: str = "DEFAULT"
    source: Literal["torchvision"] = "torchvision"

    def identity(self) -> dict[str, Any]:
        return {"source": self.source, "arch": self.arch, "weights": self.weights}


TeacherSource = PretrainSource | CheckpointSource | TorchvisionSource


@dataclass(frozen=True)
class TeacherConfig:
    """A teacher of the sweep by label; ``key`` is the hash its caches are stored under."""

    label: str
    source: TeacherSource
    dataset: str  # the dataset's name
    data_key: str = ""  # an image folder: where it is and its sizes (datasets.identity)

    @property
    def arch(self) -> str:
        return self.source.arch

    @property
    def key(self) -> str:
        return content_hash({"teacher": self.source.identity(),
                             "dataset": self.data_key or self.dataset}, 16)

    @property
    def has_classifier(self) -> bool:
        """Known before loading: pretrained teachers have one from the supervised recipe only;
        a checkpoint is checked again when it is loaded (its classifier keys decide)."""
        if isinstance(self.source, PretrainSource):
            return self.source.pretrain.recipe == "supervised"
        return isinstance(self.source, CheckpointSource)


@dataclass(frozen=True)
class StudentConfig(Config):
    arch: Annotated[str, Choice(_model_names)]


@dataclass(frozen=True)
class LossConfig:
    """An objective by name with its own typed ``Params`` (defaults filled)."""

    name: str
    params: Config

    @classmethod
    def of(cls, name: str, values: Mapping[str, Any]) -> LossConfig:
        return cls(name, make_params(name, values))

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> LossConfig:
        fields = {f.name for f in dataclasses.fields(get_objective(data["name"]).Params)}
        values = {k: v for k, v in data["params"].items() if k in fields}
        return cls(data["name"], get_objective(data["name"]).Params(**values))

    def yaml_params(self) -> dict[str, Any]:
        return params_to_yaml(self.params)

    @property
    def requirements(self) -> ObjectiveRequirements:
        return get_objective(self.name).requirements(self.params)


@dataclass(frozen=True)
class TrainConfig(Config):
    epochs: Annotated[int, Bounds(gt=0)] = 10
    batch_size: Annotated[int, Bounds(gt=0)] = 128
    lr: Annotated[float, Bounds(gt=0)] = 0.05
    momentum: Annotated[float, Bounds(ge=0)] = 0.9
    weight_decay: Annotated[float, Bounds(ge=0)] = 5e-4
    schedule: Annotated[str, Choice(SCHEDULES)] = "cosine"
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)  # fractions of epochs (150/180/210)
    gamma: Annotated[float, Bounds(gt=0)] = 0.1
    augment: Annotated[str, Choice(augment_names)] = "crop_flip"
    seed: Annotated[int, Bounds(ge=0)] = 0
    precision: Annotated[str, Choice(PRECISIONS)] = "auto"
    compile: bool = False  # torch.compile the student and the teacher
    # A multi-GPU recipe's per-device semantics on one device (orchestrator/engine/devices.py):
    # each step's batch splits into this many chunks (whole anchor groups), each with its own
    # loss terms and BatchNorm statistics, and their gradients are averaged -- what DDP on
    # that many GPUs computes.
    devices: Annotated[int, Bounds(ge=1)] = 1

    def check(self) -> None:
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError("milestones are fractions of the epochs, in (0, 1)")

    def identity(self) -> dict[str, Any]:
        """The fields that decide a result; ``devices`` only when set (> 1), so that the
        trial ids of specs written before it existed stay the same."""
        out = self.to_dict()
        if self.devices == 1:
            del out["devices"]
        return out


@dataclass(frozen=True)
class KnnConfig(Config):
    k: tuple[int, ...] = (10, 20, 200)
    temperature: Annotated[float, Bounds(gt=0)] = 0.07
    batch_size: Annotated[int, Bounds(gt=0)] = 512

    def check(self) -> None:
        if not self.k or any(k <= 0 for k in self.k):
            raise ValueError(f"need one or more positive k, got {list(self.k)}")

    @property
    def headline(self) -> str:
        """The metric a display shows: top-1 at the first configured k."""
        return f"knn/top1_k{self.k[0]}"


@dataclass(frozen=True)
class LinearConfig(Config):
    """Linear probe on the frozen backbone's features (docs/METHODS.md, "Linear probe"):
    features of both splits computed once under the test-time transform, standardised with
    the train split's mean and std, a linear classifier trained on them with SGD (momentum,
    cosine schedule to zero; zero init, batch order from the trial's seed)."""

    epochs: Annotated[int, Bounds(gt=0)] = 100
    batch_size: Annotated[int, Bounds(ge=0)] = 256  # 0: full batch
    lr: Annotated[float, Bounds(gt=0)] = 0.1
    momentum: Annotated[float, Bounds(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Bounds(ge=0)] = 0.0


def _downstream_names() -> tuple[str, ...]:
    return tuple(downstream_names())


TRANSFER_MODES = ("linear", "knn")


@dataclass(frozen=True)
class TransferDataset(Config):
    """One downstream dataset (orchestrator/data/transfer.py): its name, the folder its
    files are in (absolute) and the label its metrics are logged under
    (``transfer/<label>/...``; the name, or an image folder's folder name)."""

    name: Annotated[str, Choice(_downstream_names)]
    root: str
    label: str | None = None

    @property
    def key(self) -> str:
        return self.label or (self.root.rstrip("/").rsplit("/", 1)[-1]
                              if self.name == "imagefolder" else self.name)


@dataclass(frozen=True)
class TransferConfig(Config):
    """Transfer evaluation (docs/RECIPES.md, "Transfer evaluation"; Ericsson et al. 2021's
    linear.py): the frozen backbone's pooled features at ``image_size`` (``Resize(resize or
    image_size, bicubic)`` + ``CenterCrop(image_size)``, the student's normalisation, no
    augmentation); ``mode: linear`` -- multinomial logistic regression, C = 1/wd over
    ``grid`` wd values log-spaced in [1e-6, 1e5], chosen on the official validation split or
    a ``val_fraction`` of train drawn with ``seed``, refitted on train+val, scored once on
    test -- or ``mode: knn`` (CoSS: weighted kNN, k, temperature)."""

    datasets: tuple[TransferDataset, ...]
    image_size: Annotated[int, Bounds(ge=8)] = 224
    resize: Annotated[int | None, Bounds(ge=8)] = None
    mode: Annotated[str, Choice(TRANSFER_MODES)] = "linear"
    grid: Annotated[int, Bounds(ge=1)] = 45
    val_fraction: Annotated[float, Bounds(gt=0, lt=1)] = 0.2
    seed: Annotated[int, Bounds(ge=0)] = 0
    max_iter: Annotated[int, Bounds(ge=1)] = 1000
    k: Annotated[int, Bounds(ge=1)] = 10
    temperature: Annotated[float, Bounds(gt=0)] = 0.07
    batch_size: Annotated[int, Bounds(ge=1)] = 128  # images per feature forward
    threads: Annotated[int, Bounds(ge=1)] = 4  # decode threads (ahead of the forward)

    def check(self) -> None:
        if not self.datasets:
            raise ValueError("transfer needs one or more datasets")
        keys = [d.key for d in self.datasets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"transfer datasets need distinct labels, got {keys}; give "
                             "each a `label`")
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"resize must be >= image_size ({self.image_size}), "
                             f"got {self.resize}")

    @property
    def resize_to(self) -> int:
        return self.resize or self.image_size


@dataclass(frozen=True)
class EvalConfig:
    knn: KnnConfig = field(default_factory=KnnConfig)
    every: int = 0  # also evaluate every N epochs (learning curves); 0: at the end only
    linear: LinearConfig | None = None  # the linear probe (None: off)
    classifier: bool = False  # top-1 / top-5 of the student's own classifier (KD, SSKD)
    transfer: TransferConfig | None = None  # downstream datasets (None: off)

    @property
    def headline(self) -> str:
        return self.knn.headline

    def identity(self) -> dict[str, Any]:
        """What of the evaluation decides a result (the evaluators left off are left out,
        so adding an evaluator to ukd keeps the ids of sweeps that do not use it)."""
        out: dict[str, Any] = plain(self)
        if self.linear is None:
            del out["linear"]
        if not self.classifier:
            del out["classifier"]
        if self.transfer is None:
            del out["transfer"]
        else:  # its features' batch size and decode threads change no result
            del out["transfer"]["batch_size"]
            del out["transfer"]["threads"]
        return out


REFERENCE_KINDS = ("random_init", "ssl_only", "supervised_only")
SSL_RECIPES = ("simclr", "mocov2")  # the recipes of the ssl_only reference


@dataclass(frozen=True)
class ReferencesConfig:
    """The spec's ``references:`` section: reference rows per student architecture.

    ``ssl_only`` / ``supervised_only`` hold the recipe with its epochs resolved (the trials'
    unless given); ``arch``, ``seed`` and ``in_channels`` are filled per reference run."""

    random_init: bool = False
    ssl_only: PretrainConfig | None = None
    supervised_only: PretrainConfig | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in REFERENCE_KINDS if getattr(self, k) not in (None, False))


@dataclass(frozen=True)
class ReferenceConfig:
    """One reference run: a student architecture, untrained (random_init) or trained without
    a teacher by a recipe (ssl_only, supervised_only), evaluated like the trials."""

    kind: str  # one of REFERENCE_KINDS
    student: str  # architecture
    dataset: DatasetConfig
    seed: int
    recipe: PretrainConfig | None  # arch, seed and in_channels resolved; None for random_init
    eval: EvalConfig

    @property
    def key(self) -> str:
        """The cache key of the model (what decides its weights)."""
        return content_hash({"reference": self.kind, "student": self.student,
                             "dataset": self.dataset.name, "seed": self.seed,
                             "recipe": None if self.recipe is None
                             else self.recipe.content_hash()}, 16)

    @property
    def eval_key(self) -> str:
        """The hash of the evaluation settings (``every`` aside: a reference is evaluated
        once)."""
        identity = self.eval.identity()
        identity.pop("every", None)
        return content_hash(identity, 8)

    @property
    def run_key(self) -> str:
        """Model and evaluation: one MLflow run per run key and sweep."""
        return f"{self.key}-{self.eval_key}"

    @property
    def label(self) -> str:
        return f"reference {self.kind} {self.student} seed={self.seed}"

    def params(self) -> dict[str, str]:
        """MLflow params of the reference run."""
        out: dict[str, Any] = {"reference": self.kind, "student": self.student,
                               "seed": self.seed, "reference.key": self.key}
        out.update({f"dataset.{k}": v for k, v in self.dataset.to_dict().items()})
        if self.recipe is not None:
            out.update({f"recipe.{k}": v for k, v in self.recipe.to_dict().items()
                        if k not in ("arch", "seed")})
        out.update({f"knn.{k}": v for k, v in self.eval.knn.to_dict().items()})
        if self.eval.linear is not None:
            out.update({f"linear.{k}": v for k, v in self.eval.linear.to_dict().items()})
        out.update(transfer_params(self.eval.transfer))
        return {k: json.dumps(v) if isinstance(v, list | dict) else str(v)
                for k, v in out.items()}


@dataclass(frozen=True)
class ReferenceReport:
    """What a reference stage measured (cached under cache_dir/references/<key>/)."""

    key: str
    kind: str
    student: str
    seed: int
    directory: str
    metrics: dict[str, float]  # the evaluators' metrics (knn/..., linear/..., classifier/...)
    trained_now: bool = False
    train_time_s: float = 0.0
    history: tuple[dict[str, float], ...] = ()


@dataclass(frozen=True)
class ResourcesConfig(Config):
    cpu: Annotated[float, Bounds(gt=0)] = 1.0
    gpu: Annotated[float, Bounds(ge=0)] = 0.0
    max_concurrent: Annotated[int, Bounds(ge=0)] = 0  # 0: as many as resources allow
    retries: Annotated[int, Bounds(ge=0)] = 0
    device: Annotated[str, Choice(DEVICES)] = "auto"
    threads: Annotated[int, Bounds(gt=0)] = 1  # torch intra-op threads per trial
    stage_cpu: Annotated[float, Bounds(gt=0)] = 1.0  # CPUs of each stage task (its threads too)
    fuse: Annotated[str, Choice(FUSE_LEVELS, booleans=((False, "off"), (True, "auto")))] = "auto"
    max_group: Annotated[int, Bounds(ge=1)] = 8  # trials per fused group at most
    # Ray custom resources each trial (group) and stage task asks for, e.g. {ukd_worker: 1}
    # to place the work on the nodes started with --resources='{"ukd_worker": N}'.
    custom: Annotated[dict[str, float], Bounds(gt=0)] = field(default_factory=dict)

    def ray_resources(self, cpu: float) -> dict[str, float]:
        """What one task asks of Ray (``cpu``: the trial's or the stage's CPUs)."""
        return {"cpu": cpu, "gpu": self.gpu, **self.custom}


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a trial runs; not part of its identity."""

    device: str
    threads: int
    trial_dir: str
    cache_dir: str
    fuse: str = "off"  # resources.fuse: how the members of its group run (engine/group.py)
    gpu_fraction: float = 0.0  # resources.gpu of its group (engine/device.py: memory cap)


@dataclass(frozen=True)
class TeacherReport:
    """What the teacher stage made available, handed to every trial of that teacher."""

    key: str
    label: str
    directory: str
    knn: dict[str, float]  # the teacher's own kNN accuracy (reference column)
    graphs: dict[int, str] = field(default_factory=dict)  # neighbours per image -> file
    test_top1: float | None = None  # supervised teachers: classifier accuracy on test
    trained_now: bool = False
    train_time_s: float = 0.0
    history: tuple[dict[str, float], ...] = ()
    # The teacher's own values of the other evaluators' metrics, by metric name
    # (``linear/top1``, ...): logged by every trial as ``teacher_<metric>``.
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def weights(self) -> str:
        return f"{self.directory}/teacher.pt"


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; paths are absolute."""

    trial_id: str
    index: int
    sweep: str
    dataset: DatasetConfig
    teacher: TeacherConfig
    student: StudentConfig
    loss: LossConfig
    train: TrainConfig
    eval: EvalConfig
    runtime: RuntimeConfig
    teacher_report: TeacherReport | None = None  # filled by the driver after the stage

    def to_dict(self) -> dict[str, Any]:
        out = plain(self)
        assert isinstance(out, dict)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialConfig:
        return rebuild(cls, dict(data))

    def with_report(self, report: TeacherReport) -> TrialConfig:
        return dataclasses.replace(self, teacher_report=report)

    @functools.cached_property
    def requirements(self) -> ObjectiveRequirements:
        return self.loss.requirements

    @property
    def label(self) -> str:
        """Short human label: the loss shows only the parameters set away from defaults."""
        defaults = params_to_yaml(get_objective(self.loss.name).Params())
        changed = ",".join(f"{k}={v}" for k, v in self.loss.yaml_params().items()
                           if defaults.get(k) != v)
        loss = self.loss.name + (f"({changed})" if changed else "")
        return f"{self.teacher.label}->{self.student.arch} {loss} seed={self.train.seed}"


def trial_identity(dataset: DatasetConfig, teacher: TeacherConfig, student: StudentConfig,
                   loss: LossConfig, train: TrainConfig, evaluation: EvalConfig) -> str:
    """The trial id: a hash of everything that decides the trial's result."""
    return content_hash({"teacher": teacher.key, "student": student.arch,
                         "loss": {"name": loss.name, **loss.yaml_params()},
                         "train": train.identity(), "dataset": dataset.identity(),
                         "eval": evaluation.identity()})


def flat_params(trial: TrialConfig) -> dict[str, str]:
    """Dotted params of a trial (docs/CONTRACTS.md): MLflow params, trials.yaml, reports."""
    source = trial.teacher.source
    out: dict[str, Any] = {
        "teacher": trial.teacher.label,
        "teacher.arch": source.arch,
        "teacher.source": source.source,
        "teacher.key": trial.teacher.key,
    }
    if isinstance(source, PretrainSource):
        out.update({f"teacher.pretrain.{k}": v for k, v in source.pretrain.to_dict().items()
                    if k not in ("arch",)})
    elif isinstance(source, CheckpointSource):
        out["teacher.checkpoint"] = source.checkpoint
    else:
        out["teacher.weights"] = source.weights
    out["student"] = trial.student.arch
    out["loss.name"] = trial.loss.name
    out.update({f"loss.{k}": v for k, v in trial.loss.yaml_params().items()})
    out.update(trial.train.identity())
    out.update({f"dataset.{k}": v for k, v in trial.dataset.to_dict().items()})
    out.update({f"knn.{k}": v for k, v in trial.eval.knn.to_dict().items()})
    if trial.eval.linear is not None:
        out.update({f"linear.{k}": v for k, v in trial.eval.linear.to_dict().items()})
    if trial.eval.classifier:
        out["eval.classifier"] = True
    out.update(transfer_params(trial.eval.transfer))
    out["trial_id"] = trial.trial_id
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in out.items()}


def transfer_params(transfer: TransferConfig | None) -> dict[str, Any]:
    """``transfer.<setting>`` params (the datasets as one list of labels and one of roots)."""
    if transfer is None:
        return {}
    out: dict[str, Any] = {f"transfer.{k}": v for k, v in transfer.to_dict().items()
                           if k not in ("datasets", "batch_size", "threads")}
    out["transfer.datasets"] = [d.key for d in transfer.datasets]
    out["transfer.roots"] = [d.root for d in transfer.datasets]
    return out
