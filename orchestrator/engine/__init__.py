"""The trial engine: a group of trials that share one batch stream and one teacher pass.

A trial alone is a group of one. Boxes (each its own module): :mod:`streams` (seeded random
streams), :mod:`batches` (the data: order, neighbour batches, augmented views, extra fetches),
:mod:`teacher_pass` (one frozen-teacher forward per batch, outputs computed lazily once),
:mod:`member` (a trial's student + objective + optimiser + schedule + checkpoint),
:mod:`group` (the loop). Nothing here imports Ray, MLflow or pydantic.
"""
