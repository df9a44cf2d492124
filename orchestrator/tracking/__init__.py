"""MLflow, written by the driver only: where runs go (:mod:`.store`), the sweep's parent run
(:mod:`.sweep`), trial runs (:mod:`.trials`), teacher and reference runs (:mod:`.stage_runs`),
all in one :class:`Tracker` (:mod:`.tracker`)."""

from orchestrator.tracking.store import (
    check_artifact_store,
    default_tracking_uri,
    is_local_store,
    log_report,
    mlflow_log_to,
)
from orchestrator.tracking.tracker import Tracker

__all__ = ["Tracker", "check_artifact_store", "default_tracking_uri", "is_local_store",
           "log_report", "mlflow_log_to"]
