"""From a token store to batches: packing into windows, seeded shuffling, per-process slicing.

Packing: a split's documents are stored back to back with an end-of-document id between them; the
stream is cut into non-overlapping windows of `seq_len + 1` tokens (inputs are the first seq_len,
targets the last seq_len), so no token is padding.

Order: the training stream is a Grain `MapDataset` of windows, shuffled with `train.seed` and
reshuffled every epoch when D exceeds the corpus. Global batch `s` is the window sequence
[s*B, (s+1)*B) of that order, whatever the number of processes; process p of P reads only rows
[p*B/P, (p+1)*B/P) of it. So the data a step sees is a pure function of (seed, step), and the
iterator's checkpointable state is just the next step.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import grain
import numpy as np

from scalelab.config import ConfigError
from scalelab.data.stdlib import open_stdlib
from scalelab.data.store import TokenStore


class Windows:
    """Random access to the packed windows of one split (a Grain-compatible data source)."""

    def __init__(self, shards: list[np.ndarray], seq_len: int):
        self.shards, self.width = shards, seq_len + 1
        counts = [max(0, (len(s) - 1) // seq_len) for s in shards]
        self.starts = np.cumsum([0] + counts).tolist()
        self.seq_len = seq_len

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        shard = bisect.bisect_right(self.starts, index) - 1
        offset = (index - self.starts[shard]) * self.seq_len
        return np.asarray(self.shards[shard][offset : offset + self.width], dtype=np.int32)

    def gather(self, indices_N: np.ndarray) -> np.ndarray:
        """Windows `indices_N` at once: N x (seq_len + 1), as `self[i]` gives them one by one."""
        shard_N = np.searchsorted(self.starts, indices_N, side="right") - 1
        out_NxW = np.empty((len(indices_N), self.width), dtype=np.int32)
        columns = np.arange(self.width)
        for shard in np.unique(shard_N):
            rows = np.flatnonzero(shard_N == shard)
            offsets = (indices_N[rows] - self.starts[shard]) * self.seq_len
            out_NxW[rows] = self.shards[shard][offsets[:, None] + columns]
        return out_NxW


def open_store(data_cfg) -> TokenStore:
    if data_cfg.source == "stdlib":
        return open_stdlib(data_cfg.val_fraction)
    return TokenStore(data_cfg.path)


@dataclass
class DataPlan:
    """What a run will read: steps, epochs, and the held-out batches."""

    steps: int
    tokens_per_step: int
    train_windows: int
    epochs: float  # passes over the training split that `steps` needs

    @property
    def repeats_data(self) -> bool:
        return self.epochs > 1


def plan(store: TokenStore, data_cfg, batch_size: int) -> DataPlan:
    seq_len = data_cfg.seq_len
    windows = len(Windows(store.shards("train"), seq_len))
    tokens_per_step = batch_size * seq_len
    steps = int(data_cfg.tokens) // tokens_per_step
    if windows < batch_size:
        raise ValueError(
            f"data: the training split holds {windows} windows of data.seq_len={seq_len}, fewer than one "
            f"batch of train.batch_size={batch_size}"
        )
    return DataPlan(steps=steps, tokens_per_step=tokens_per_step, train_windows=windows,
                    epochs=steps * batch_size / windows)


class StepReader:
    """The batches of `train_iterator` in order, read in the caller's thread, with the state of
    Grain's own iterator (`{"next_index": i}`), so either reader resumes from the other's checkpoint.

    For loops that read many small batches at a time (a packed group takes K of each member's per
    call): the same window order as Grain's iterator, with the rows of a whole call gathered at once.
    Grain's threaded iterator costs ~0.4 ms a batch of 8 windows, this ~0.1 ms, and on a CPU its
    reader threads take cores from the step itself."""

    def __init__(self, order: grain.MapDataset, windows: Windows, rows: int, steps: int, global_index):
        self.order, self.windows, self.rows, self.steps = order, windows, rows, steps
        self.global_index = global_index
        self.next_index = 0

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self.next_index >= self.steps:
            raise StopIteration
        return self.take(1)[0]

    def take(self, n: int) -> np.ndarray:
        """The next `n` batches, stacked: n x rows x (seq_len + 1)."""
        if self.next_index + n > self.steps:
            raise StopIteration
        first = self.next_index * self.rows
        picks = [self.order[self.global_index(j)] for j in range(first, first + n * self.rows)]
        self.next_index += n
        return self.windows.gather(np.asarray(picks, dtype=np.int64)).reshape(n, self.rows, -1)

    def get_state(self) -> dict:
        return {"next_index": self.next_index}

    def set_state(self, state: dict) -> None:
        self.next_index = int(state["next_index"])


def train_iterator(store: TokenStore, data_cfg, batch_size: int, seed: int, steps: int,
                   process_index: int = 0, process_count: int = 1, threads: bool = True):
    """This process' rows of global batches 0..steps-1, as a checkpointable Grain iterator (with
    `threads=False`, a `StepReader` of the same batches and state)."""
    if batch_size % process_count:
        raise ValueError(f"train.batch_size={batch_size} must divide over {process_count} processes")
    windows = Windows(store.shards("train"), data_cfg.seq_len)
    epochs = math.ceil(steps * batch_size / len(windows))
    # the window order: Grain's shuffle of the window indices, reshuffled every epoch (both readers)
    order = grain.MapDataset.range(len(windows)).shuffle(seed=seed).repeat(epochs)
    local = batch_size // process_count

    def global_index(j: int) -> int:
        step, row = divmod(j, local)
        return step * batch_size + process_index * local + row

    if not threads:
        return StepReader(order, windows, local, steps, global_index)
    ds = grain.MapDataset.range(steps * local).map(lambda j: windows[order[global_index(j)]]).batch(local)
    options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=data_cfg.prefetch)
    return iter(ds.to_iter_dataset(options))


def process_rows(batch_size: int, process_index: int, process_count: int) -> range:
    """The rows of every global batch that `train_iterator` and `eval_batches` give this process."""
    local = batch_size // process_count
    return range(process_index * local, (process_index + 1) * local)


def check_batch_layout(indices_map: dict, batch_size: int, process_index: int, process_count: int,
                       mesh_shape: dict | None = None) -> None:
    """Refuse (ConfigError) a batch sharding whose rows on this process's devices are not `process_rows`.

    `indices_map` is the batch sharding's `addressable_devices_indices_map` for a global batch. The
    pipeline hands each process one contiguous block of rows; a mesh whose batch axes are laid over
    the processes otherwise (interleaved, or the batch replicated across processes, as when only
    `mesh.tensor` or `mesh.fsdp` outside the batch rule spans hosts) would silently train every
    device on the wrong rows.
    """
    rows = set()
    for index in indices_map.values():
        rows.update(range(*index[0].indices(batch_size)))
    want = process_rows(batch_size, process_index, process_count)
    if rows != set(want):
        held = _ranges(sorted(rows))
        raise ConfigError(
            "mesh", f"the batch sharding puts rows {held} of each train.batch_size={batch_size} batch on "
            f"process {process_index}'s devices, but the data pipeline gives each of the {process_count} "
            f"processes one contiguous block (process {process_index}: rows {want.start}-{want.stop - 1}); "
            f"mesh {mesh_shape or ''} must split the batch over the processes in order (lay the mesh axes "
            f"of mesh.rules.batch over the hosts, e.g. mesh.data=<hosts>)")


def _ranges(rows: list[int]) -> str:
    """[0, 1, 2, 5, 6] -> '0-2, 5-6'."""
    spans, start = [], None
    for i, r in enumerate(rows):
        if start is None:
            start = r
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            spans.append(f"{start}-{r}" if r != start else f"{r}")
            start = None
    return ", ".join(spans) or "none"


def spread(n_windows: int, count: int) -> np.ndarray:
    """`count` window indices spread evenly over `n_windows` (all of them when `count` covers the split),
    in order: a fixed sample of the whole split. The first windows alone are its first few files,
    which measured a study's seeds 1-5% apart where the whole split put them 0.7-2% apart (NOTES.md)."""
    if count >= n_windows:
        return np.arange(n_windows)
    return (np.arange(count, dtype=np.int64) * n_windows) // count


def eval_batches(store: TokenStore, data_cfg, batch_size: int, eval_tokens: int,
                 process_index: int = 0, process_count: int = 1) -> list[np.ndarray]:
    """The fixed held-out set: whole batches of validation windows spread evenly over the split."""
    windows = Windows(store.shards("val"), data_cfg.seq_len)
    n_batches = max(1, min(eval_tokens // (batch_size * data_cfg.seq_len), len(windows) // batch_size))
    if len(windows) < batch_size:
        raise ValueError(
            f"data: the validation split holds {len(windows)} windows, fewer than one batch of {batch_size}"
        )
    chosen = spread(len(windows), n_batches * batch_size)
    local = batch_size // process_count
    batches = []
    for b in range(n_batches):
        start = b * batch_size + process_index * local
        batches.append(np.stack([windows[int(chosen[start + r])] for r in range(local)]))
    return batches
