"""Progress: a rich bar on a terminal; off one (SLURM, nohup, a pipe), a log line per logged row.

Each line (step, loss, eval loss on evaluation steps, tokens/s, MFU, ETA) goes to stderr and to
`log_file` (the run's train.log) through a logger of its own, so that it is neither repeated on
Hydra's console handler nor, in a packed sweep, written into the other members' train.log.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, as in the rest of train.log


class Progress:
    def __init__(self, total: int, enabled: bool = True, log_file=None, label: str = ""):
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self.lines = enabled and not self.enabled
        self.log_file, self.label = log_file, label
        self._bar = self._log = None
        self._first: tuple[int, float] | None = None  # (step, time) of the first row: ETA's origin

    def __enter__(self) -> Progress:
        if self.enabled:
            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeRemainingColumn(), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, loss="-", speed="-")
        elif self.lines:
            self._log = line_logger(self.log_file)
        return self

    def update(self, step: int, row: dict | None) -> None:
        if self._bar is not None and row is None:
            self._bar.update(self._task, completed=step)
        elif self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{row['train_loss']:.4f}",
                             speed=f"{row['tokens_per_second']:,.0f}")
        elif self._log is not None and row is not None:
            self._log.info("%s", self.line(step, row, time.time()))

    def line(self, step: int, row: dict, now: float) -> str:
        """`step 20/100 loss 4.1234 [eval 4.2 ]12,345 tok/s MFU 1.23% ETA 0:01:05`."""
        if self._first is None or step <= self._first[0]:
            self._first = (step, now)
            tokens_per_step = row["tokens"] / step
            rate = row["tokens_per_second"] / tokens_per_step if row["tokens_per_second"] > 0 else 0.0
        else:  # steps per second since the first row (compilation excluded, evaluations included)
            rate = (step - self._first[0]) / (now - self._first[1]) if now > self._first[1] else 0.0
        eta = datetime.timedelta(seconds=round((self.total - step) / rate)) if rate > 0 else "?"
        evaluated = f"eval {row['eval_loss']:.4f} " if "eval_loss" in row else ""
        return (f"{self.label}step {step}/{self.total} loss {row['train_loss']:.4f} {evaluated}"
                f"{row['tokens_per_second']:,.0f} tok/s MFU {100 * row['mfu']:.2f}% ETA {eta}")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._log is not None:
            for handler in self._log.handlers:
                handler.close()
            self._log = None


def line_logger(log_file) -> logging.Logger:
    """A logger outside the hierarchy (nothing propagates) writing to stderr and `log_file`."""
    logger = logging.Logger("scalelab.progress", logging.INFO)
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    return logger
