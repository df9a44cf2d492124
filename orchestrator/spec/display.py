"""Lines that describe a trial for ``ukd sweep --dry-run`` (display only: the numbers come
from the data layer's samplers)."""

from __future__ import annotations

from orchestrator.data.sampling import epoch_size
from orchestrator.spec.config import TrialConfig


def images_per_epoch(trial: TrialConfig, n: int | None = None) -> str:
    """One line for ``ukd sweep --dry-run``: how many images an epoch of ``trial`` shows
    (``n``: the training-set size when known; without it the line gives the formula)."""
    batch = trial.train.batch_size
    nb = trial.requirements.neighbour_batches
    if nb is None:
        line = f"plain batches of {batch}: an epoch shows N images"
        if n is not None:
            size = epoch_size(n, batch)
            line += f" (N = {n:,}: {size.steps} steps, {size.images:,} images)"
        return line
    group = nb.neighbours + 1
    per_batch = max(1, batch // group)
    share = ("every training image anchors once" if nb.anchors == 1.0
             else f"{nb.anchors:g} of the training images anchor once")
    line = (f"neighbour batches of {per_batch} anchors x (1 + {nb.neighbours} of top-"
            f"{nb.pool}) = {per_batch * group} images: {share}, an epoch shows "
            f"{nb.anchors * group:g} x N images")
    if n is not None:
        size = epoch_size(n, batch, nb)
        line += (f" (N = {n:,}: {size.steps} steps, {size.images:,} images, "
                 f"{size.images / n:.1f} x N)")
    return line


def student_images(trial: TrialConfig, n: int) -> int:
    """Images one trial's student processes over all its epochs (``n`` training images)."""
    size = epoch_size(n, trial.train.batch_size, trial.requirements.neighbour_batches)
    return trial.train.epochs * size.images
