"""MLflow from the driver only: one writer, so many concurrent trials never lock SQLite.

Layout (docs/CONTRACTS.md): experiment ``ukd/<sweep>``, one parent run per sweep, one child
run per trial (tag ``mlflow.parentRunId``), teacher pretraining runs beside them. On resume
the same runs are reused: a trial's run is found by its ``ukd.trial_id`` tag, so a sweep never
holds two runs of one trial, and runs a dead process left RUNNING are marked KILLED.

:class:`Tracker` is the sweep's one writer, made of the pieces by what they record: the
parent run (:mod:`.sweep`), the trial runs (:mod:`.trials`), the teacher and reference runs
(:mod:`.stage_runs`); :mod:`.store` says where they go.
"""

from __future__ import annotations

from orchestrator.tracking.stage_runs import StageRuns
from orchestrator.tracking.trials import TrialRuns


class Tracker(TrialRuns, StageRuns):
    """The sweep's runs in one MLflow experiment (see the module docstring)."""
