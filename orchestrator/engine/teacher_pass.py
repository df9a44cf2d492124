"""One frozen-teacher forward per batch, shared by every member of a group.

:class:`SharedTeacher` has the :class:`~models.teacher.FrozenTeacher` interface the objectives
call (``features``, ``embedding``, ``logits``); each output is computed on first request and
reused for the rest of the step when another member passes the same input tensor (members
share the batch's view tensors), so K members cost one teacher forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from models.teacher import FrozenTeacher


@dataclass(frozen=True)
class TeacherNeeds:
    """What a trial asks of its teacher beyond the backbone."""

    classifier: bool = False  # logits over the dataset's classes (KD, SSKD)
    ssl_head: bool = False  # the SSL projection head (SEED, DisCo, BINGO)


class SharedTeacher(nn.Module):
    def __init__(self, teacher: FrozenTeacher) -> None:
        super().__init__()
        self.teacher = teacher
        self._cache: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self.forwards = 0  # backbone forwards actually run (the benchmarks count them)

    def new_step(self) -> None:
        self._cache.clear()

    def _cached(self, kind: str, x: Tensor, compute: Any) -> Tensor:
        key = (kind, id(x))
        hit = self._cache.get(key)
        if hit is not None and hit[0] is x:
            return hit[1]
        out: Tensor = compute(x)
        self._cache[key] = (x, out)  # the input is kept so that its id stays unique
        return out

    # -- the FrozenTeacher interface -------------------------------------------------------

    @property
    def feature_dim(self) -> int:
        return self.teacher.feature_dim

    @property
    def embedding_dim(self) -> int:
        return self.teacher.embedding_dim

    @property
    def has_classifier(self) -> bool:
        return self.teacher.has_classifier

    @property
    def backbone(self) -> nn.Module:
        return self.teacher.backbone

    def features(self, x: Tensor) -> Tensor:
        def run(inp: Tensor) -> Tensor:
            self.forwards += 1
            return self.teacher.features(inp)

        return self._cached("features", x, run)

    def batch_features(self, x: Tensor) -> Tensor:
        """The batch-statistics forward (DisCo / BINGO), cached like :meth:`features`."""
        def run(inp: Tensor) -> Tensor:
            self.forwards += 1
            return self.teacher.batch_features(inp)

        return self._cached("batch_features", x, run)

    def embedding(self, features: Tensor) -> Tensor:
        return self._cached("embedding", features, self.teacher.embedding)

    def logits(self, features: Tensor) -> Tensor:
        return self._cached("logits", features, self.teacher.logits)

    def train(self, mode: bool = True) -> SharedTeacher:
        self.teacher.train(mode)  # a FrozenTeacher stays in eval mode
        return self
