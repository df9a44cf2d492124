"""The trial engine: a group of trials that share one batch stream and one teacher pass.

A trial alone is a group of one. Boxes (each its own module): :mod:`device` (the device and
the CUDA memory cap), :mod:`precision` (autocast, memory layout), :mod:`teacher_pass` (one
frozen-teacher forward per batch, outputs computed lazily once), :mod:`member` (a trial's
student + objective + optimiser + schedule + checkpoint), :mod:`stacked` (same-structure
members vmapped), :mod:`knn` and :mod:`evaluators` (what a trial measures), :mod:`group` (the
loop). The data (streams, batches) comes from :mod:`orchestrator.data`; the teacher is handed
in by the caller (:mod:`orchestrator.stages.trials`). Nothing here imports Ray, MLflow or
pydantic.
"""
