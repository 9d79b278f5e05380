"""TensorBoard: event files in RUN_DIR/tensorboard/, written by tensorboardX (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

from tensorboardX import FileWriter
from tensorboardX.proto.summary_pb2 import Summary

from scalelab.runfiles import TENSORBOARD


class TensorBoard:
    keeps_history = False  # a new event file per attempt; TensorBoard drops steps past a restart

    def __init__(self, options: dict):
        self._writer = None

    def start(self, run_name: str, config: dict, run_dir: Path) -> None:
        self._writer = FileWriter(str(Path(run_dir) / TENSORBOARD), flush_secs=30)

    def log(self, step: int, metrics: dict) -> None:
        # one event per row with every scalar in it: one add_scalar per value is several times
        # slower, which shows in small models' step times when logging every step
        values = [Summary.Value(tag=key, simple_value=value) for key, value in metrics.items()]
        self._writer.add_summary(Summary(value=values), global_step=step)

    def finish(self, summary: dict) -> None:
        try:
            self._writer.close()
        except OSError:  # a full disk: give the writer up, or its exit hook tries (and prints) again
            events = self._writer.event_writer
            worker = getattr(events, "_worker", None)
            if worker is not None:
                worker.stop()
            events._closed = True
            raise
