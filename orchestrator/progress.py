"""Live terminal view of a sweep: counts, best so far, and each running trial's epoch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


@dataclass
class TrialState:
    label: str
    epochs: int
    status: str = "pending"
    epoch: int = 0
    loss: float | None = None
    score: float | None = None
    reason: str = ""


@dataclass
class SweepProgress:
    total: int
    metric: str
    skipped: int = 0
    trials: dict[str, TrialState] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    console: Console = field(default_factory=lambda: Console(stderr=True))
    _live: Live | None = None

    def __enter__(self) -> SweepProgress:
        if not self.console.is_terminal:
            return self  # logs and CI: one line per event instead of a live table
        self._live = Live(self.render(), console=self.console, refresh_per_second=2,
                          transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(None, None, None)
            self._live = None

    def add(self, trial_id: str, label: str, epochs: int) -> None:
        self.trials[trial_id] = TrialState(label, epochs)

    def update(self, trial_id: str, **changes: object) -> None:
        state = self.trials[trial_id]
        for key, value in changes.items():
            setattr(state, key, value)
        if self._live is not None:
            self._live.update(self.render())
        else:
            self.console.print(self._line(state), highlight=False, soft_wrap=True)

    def _line(self, t: TrialState) -> str:
        c = self.counts()
        detail = f"epoch {t.epoch}/{t.epochs}"
        if t.loss is not None:
            detail += f" loss {t.loss:.4f}"
        if t.score is not None:
            detail += f" {self.metric} {t.score:.2f}"
        if t.reason:
            detail += f" ({t.reason})"
        return (f"[{c['done']}/{self.total} done, {c['running']} running, {c['failed']} failed]"
                f" {t.label}: {t.status}, {detail}")

    def counts(self) -> dict[str, int]:
        out = {"done": self.skipped, "running": 0, "failed": 0, "pending": 0}
        for t in self.trials.values():
            key = {"finished": "done"}.get(t.status, t.status)
            out[key] = out.get(key, 0) + 1
        return out

    def render(self) -> Group:
        c = self.counts()
        best = max((t for t in self.trials.values() if t.score is not None),
                   key=lambda t: t.score or 0.0, default=None)
        elapsed = time.perf_counter() - self.started
        head = Text(
            f"trials {c['done']}/{self.total} done, {c['running']} running, "
            f"{c['failed']} failed, {c['pending']} pending  |  {elapsed:5.0f}s  |  best "
            + (f"{self.metric} {best.score:.2f} ({best.label})" if best and best.score else "-")
        )
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("trial", "status", "epoch", "loss", self.metric):
            table.add_column(col)
        for t in self.trials.values():
            if t.status in ("running", "failed") or t.score is not None:
                table.add_row(t.label, t.status + (f" ({t.reason[:40]})" if t.reason else ""),
                              f"{t.epoch}/{t.epochs}",
                              "-" if t.loss is None else f"{t.loss:.4f}",
                              "-" if t.score is None else f"{t.score:.2f}")
        return Group(head, table)
