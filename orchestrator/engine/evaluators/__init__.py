"""What a trial measures of its student: the registry and evaluate functions (:mod:`.base`)
and the plug-ins (kNN, linear probe, classifier), imported here so they register."""

from orchestrator.engine.evaluators import (  # noqa: F401 (register)
    classifier,
    knn,
    linear,
    transfer,
)
from orchestrator.engine.evaluators.base import (
    EVALUATORS,
    BestTracker,
    EvalContext,
    enabled_evaluators,
    evaluate,
    evaluate_model,
    evaluator_names,
    periodic_evaluators,
    register_evaluator,
)

__all__ = ["EVALUATORS", "BestTracker", "EvalContext", "enabled_evaluators", "evaluate",
           "evaluate_model", "evaluator_names", "periodic_evaluators",
           "register_evaluator"]
