"""Counting the aten ops a piece of code runs: on a GPU each op that computes is a kernel
launch (near enough), and a small model's device work is bound by launches, not FLOPs. A CPU
counts them as well as a GPU, so the launch budget of the device paths can be measured and
tested on a machine without one (benchmarks/data_throughput.py's (d), tests/models)."""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only make views or read a scalar: no kernel.
VIEW_OPS = frozenset({"view", "select", "slice", "unbind", "expand", "unsqueeze", "squeeze", "t",
                      "transpose", "permute", "detach", "alias", "_unsafe_view", "as_strided",
                      "_local_scalar_dense", "lift_fresh", "empty"})


class OpCount(TorchDispatchMode):
    """``with OpCount() as ops: ...`` -- ``ops.count`` is the number of computing ops run."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        self.count += func.overloadpacket.__name__ not in VIEW_OPS
        return func(*args, **(kwargs or {}))
