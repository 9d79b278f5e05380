"""The progress bar: step, loss and tokens/s, drawn by rich on a terminal and silent elsewhere."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, enabled: bool = True):
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeRemainingColumn(), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, loss="-", speed="-")
        return self

    def update(self, step: int, row: dict | None) -> None:
        if self._bar is not None and row is None:
            self._bar.update(self._task, completed=step)
        elif self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{row['train_loss']:.4f}",
                             speed=f"{row['tokens_per_second']:,.0f}")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
