"""Distillation objectives, registered by name (see :mod:`losses.base`)."""

# isort: off
from losses import bingo  # noqa: F401  (registers bingo)
from losses import compress  # noqa: F401  (registers compress)
from losses import coss  # noqa: F401  (registers coss, cos)
from losses import cospress  # noqa: F401  (registers cospress)
from losses import disco  # noqa: F401  (registers disco)
from losses import feature_regression  # noqa: F401  (registers mse, cosine)
from losses import kd  # noqa: F401  (registers kd)
from losses import pkt  # noqa: F401  (registers pkt)
from losses import rkd  # noqa: F401  (registers rkd)
from losses import seed  # noqa: F401  (registers seed)
from losses import smd  # noqa: F401  (registers smd)
from losses import sskd  # noqa: F401  (registers sskd)

# isort: on
from losses.base import (
    OBJECTIVES,
    LossTerms,
    NeighbourBatches,
    Objective,
    ObjectiveContext,
    ObjectiveRequirements,
    StepInputs,
    build_objective,
    get_objective,
    make_params,
    objective_names,
    param_fields,
    params_to_yaml,
)

__all__ = [
    "OBJECTIVES",
    "LossTerms",
    "NeighbourBatches",
    "Objective",
    "ObjectiveContext",
    "ObjectiveRequirements",
    "StepInputs",
    "build_objective",
    "get_objective",
    "make_params",
    "objective_names",
    "param_fields",
    "params_to_yaml",
]
