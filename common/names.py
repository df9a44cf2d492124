"""MLflow names: tags, params, metrics and artifacts that the orchestrator writes and the
reports read (docs/CONTRACTS.md). One home, so writer and reader cannot drift apart."""

from __future__ import annotations

EXPERIMENT_PREFIX = "ukd/"  # experiment of a sweep: ukd/<sweep name>

# ---- tags
TAG_PARENT = "mlflow.parentRunId"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
# The experiment's kind as MLflow 3's own selector writes it. MLflow 3.17's UI does not read it
# to pick its page: the GenAI / Model-training mode comes from the URL (RUNS_VIEW's
# `workflowType`) or the browser's last choice (local storage `mlflow.workflowType`, default
# GenAI), whatever the tags; RUNS_VIEW is the address that lands on the runs.
EXPERIMENT_KIND = "custom_model_development"
RUNS_VIEW = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"
TAG_KIND = "ukd.kind"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
KIND_TEACHER = "teacher"
KIND_REFERENCE = "reference"  # a reference row: random_init / ssl_only / supervised_only
TAG_SWEEP_ID = "ukd.sweep_id"
TAG_AXES = "ukd.axes"  # JSON list of the flattened param keys that vary in the grid
TAG_OUTPUT_DIR = "ukd.output_dir"
TAG_SPEC_PATH = "ukd.spec_path"
TAG_RAY_ADDRESS = "ukd.ray_address"
TAG_TRIAL_ID = "ukd.trial_id"
TAG_GROUP_ID = "ukd.group_id"  # the fused group a trial ran in
TAG_NODE_ID = "ukd.node_id"  # the Ray node a trial (its group) ran on
TAG_TEACHER = "ukd.teacher"  # teacher label
TAG_STUDENT = "ukd.student"  # student architecture
TAG_OBJECTIVE = "ukd.objective"
TAG_REFERENCE = "ukd.reference"  # which reference row a reference run is
TAG_TRIAL_DIR = "ukd.trial_dir"
TAG_FAILURE_REASON = "ukd.failure_reason"
TAG_FAILURE_EPOCH = "ukd.failure_epoch"
TAG_ATTEMPTS = "ukd.attempts"
TAG_RESUMED_FROM = "ukd.resumed_from_epoch"
# A trial report's wall time in ms: a resumed trial re-sends earlier reports, logged with it.
REPORT_TIME = "time_ms"
TAG_TEACHER_HASH = "ukd.teacher_hash"
TAG_TEACHER_DIR = "ukd.teacher_dir"
TAG_REFERENCE_KEY = "ukd.reference_key"  # a reference run's model and evaluation hash
TAG_REFERENCE_DIR = "ukd.reference_dir"
TAG_DATA_CONTEXT = "mlflow.data.context"  # a logged dataset input's role (train)

# ---- params (flattened trial config; see orchestrator.spec.config.flat_params)
PARAM_TEACHER = "teacher"
PARAM_STUDENT = "student"
PARAM_OBJECTIVE = "loss.name"
PARAM_SEED = "seed"
PARAM_TRIAL_ID = "trial_id"
PARAM_TEACHER_KEY = "teacher.key"

# ---- metrics
LOSS_PREFIX = "loss/"  # per epoch: loss/<term>, loss/total
LOSS_TOTAL = "loss/total"
LR = "lr"
EPOCH_TIME = "epoch_time_s"
TRAIN_TIME = "train_time_s"
KNN_PREFIX = "knn/"
TEACHER_PREFIX = "teacher_"  # teacher_<metric>: the teacher's own value of a metric
TEACHER_KNN_PREFIX = TEACHER_PREFIX + KNN_PREFIX
PRETRAIN_PREFIX = "pretrain/"
TEACHER_TEST_TOP1 = "test/top1"
LINEAR_PREFIX = "linear/"  # linear/top1, linear/top5: the linear probe
CLASSIFIER_PREFIX = "classifier/"  # classifier/top1, classifier/top5: the model's own logits
# transfer/<dataset>/<metric>: the transfer evaluation (top1; mean_per_class for Pets,
# Flowers-102 and Caltech-101; knn_top1 in kNN mode) and transfer/<dataset>/C, the chosen C.
TRANSFER_PREFIX = "transfer/"
TRANSFER_METRICS = ("top1", "mean_per_class", "knn_top1")
EVALUATOR_PREFIXES = (KNN_PREFIX, LINEAR_PREFIX, CLASSIFIER_PREFIX, TRANSFER_PREFIX)
# Parent run summary (logged when the sweep closes): trials/<status> counts and, per top-1
# metric of the evaluators, best/<metric>: the best finished trial's value.
SUMMARY_PREFIX = "trials/"
BEST_PREFIX = "best/"
BEST_SUFFIX = "_best"  # <metric>_best: best value over the periodic evaluations
BEST_EPOCH_SUFFIX = "_best_epoch"


def knn_metric(top: int, k: int) -> str:
    """``knn/top1_k10``-style name of a kNN accuracy."""
    return f"{KNN_PREFIX}top{top}_k{k}"


def teacher_metric(metric: str) -> str:
    """The teacher's reference value of ``metric``: ``knn/top1_k10`` -> ``teacher_knn/...``."""
    return TEACHER_PREFIX + metric


# ---- artifacts and files of a sweep's output directory
SPEC_ARTIFACT = "spec.yaml"
TRIALS_ARTIFACT = "trials.yaml"
REPORT_ARTIFACTS = "report"
SWEEP_JSON = "sweep.json"
SWEEP_LOG = "sweep.log"  # MLflow's own log lines (the database's creation, migrations)
DEFAULT_DB = "mlflow.db"
