"""`scalelab eval`: loss, perplexity and bits per byte of a checkpoint on a dataset split.

The loss is the mean next-token cross-entropy (nats per token) over the packed windows of the
split (`data.seq_len` of the run), all of them or `max_tokens // seq_len` spread evenly over the
split (the windows training evaluates on, for the run's `train.eval_tokens`). Bits per byte divide by the split's bytes per token from the
dataset manifest, as training does, so they compare across tokenizers.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

from scalelab import paths
from scalelab.config import Config
from scalelab.data.pipeline import Windows, spread
from scalelab.data.store import TokenStore
from scalelab.infer.load import LoadedModel, dataset_path, load_checkpoint, load_model  # noqa: F401
from scalelab.interop.hf.directory import hf_dir
from scalelab.model.functional import ModelFns
from scalelab.model.loss import weighted_loss_sum
from scalelab.model.transformer import ModelSpec
from scalelab.train.checkpoint import CheckpointFiles, find_checkpoint

# ---- evaluation -------------------------------------------------------------------------------

def open_eval_store(data: str | None, files: CheckpointFiles, config: Config) -> TokenStore:
    """`--data`: a prepared dataset dir, `stdlib`, or (None) the dataset the run trained on."""
    if data == "stdlib" or (data is None and config.data.source == "stdlib"):
        from scalelab.data.stdlib import open_stdlib

        return open_stdlib(config.data.val_fraction)
    if data is not None:
        return TokenStore(data)
    path = dataset_path(files, config)
    if not path:
        raise ValueError("the run records no dataset path; name one with --data DIR")
    if not paths.is_url(path) and not Path(path).is_dir():
        raise FileNotFoundError(f"the run's dataset {path} is not there (moved, or a path relative to another "
                                f"directory); name it with --data DIR")
    return TokenStore(path)


@functools.lru_cache(maxsize=8)
def loss_sum_fn(spec: ModelSpec):
    """Jitted (params, windows BxT+1, weights B) -> summed next-token cross-entropy of the weighted rows.

    One per model shape, so evaluating several checkpoints of a run compiles once.
    """
    return jax.jit(functools.partial(weighted_loss_sum, ModelFns(spec)))


def evaluate_store(fns: ModelFns, params, store: TokenStore, split: str, seq_len: int, batch_size: int,
                   max_tokens: int | None = None, progress: bool = False) -> dict:
    """Mean loss over the windows of `split` (all of them, or max_tokens // seq_len spread over it)."""
    if split not in store.manifest["splits"]:
        raise ValueError(f"{store.path} has no split {split!r}; it has {', '.join(store.manifest['splits'])}")
    windows = Windows(store.shards(split), seq_len)
    n = len(windows)
    if max_tokens is not None:
        if max_tokens < seq_len:
            raise ValueError(f"--max-tokens={max_tokens} is less than one window of data.seq_len={seq_len} tokens")
        n = min(n, max_tokens // seq_len)
    if n == 0:
        raise ValueError(f"the {split} split of {store.path} holds less than one window of {seq_len + 1} tokens")
    loss_sum = loss_sum_fn(fns.spec)
    total = 0.0
    started = time.perf_counter()
    chosen = spread(len(windows), n)
    batches = range(0, n, batch_size)
    for start in _progress(batches, progress, "eval"):
        rows = [windows[int(i)] for i in chosen[start:start + batch_size]]
        weights = np.zeros(batch_size, np.float32)
        weights[: len(rows)] = 1.0
        rows += [np.zeros_like(rows[0])] * (batch_size - len(rows))  # padding rows, weight 0
        total += float(loss_sum(params, np.stack(rows), weights))
    seconds = time.perf_counter() - started
    tokens = n * seq_len
    loss = total / tokens
    bytes_per_token = store.bytes_per_token(split)
    return {
        "data": str(store.path), "split": split, "windows": n, "seq_len": seq_len, "batch_size": batch_size,
        "tokens": tokens, "loss": loss, "perplexity": math.exp(min(loss, 700.0)),
        "bpb": loss / math.log(2) / bytes_per_token, "bytes_per_token": bytes_per_token,
        "seconds": round(seconds, 3), "tokens_per_second": tokens / seconds if seconds > 0 else None,
    }


def _progress(items, enabled: bool, label: str):
    if not (enabled and sys.stderr.isatty()):
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=label, transient=True)


def evaluate(run_or_checkpoint: str | Path, data: str | None = None, split: str = "val",
             max_tokens: int | None = None, batch_size: int | None = None, progress: bool = False) -> dict:
    """Evaluate a run's newest checkpoint (or one checkpoint, or an `hf:DIR` model with --data);
    the result as a JSON-ready dict."""
    hf = hf_dir(str(run_or_checkpoint))
    if hf is not None:
        if data is None:
            raise ValueError(f"{run_or_checkpoint}: name the dataset to evaluate on with --data DIR")
        files = CheckpointFiles(step_dir=hf.resolve(), step=-1, run_dir=None, meta={}, summary={})
        fns, params, tokenizer, config = load_model(run_or_checkpoint)
    else:
        files = find_checkpoint(run_or_checkpoint)
        fns, params, tokenizer, config = load_checkpoint(files)
    store = open_eval_store(data, files, config)
    if store.tokenizer.to_dict() != tokenizer.to_dict():
        ours, theirs = tokenizer.to_dict(), store.tokenizer.to_dict()
        raise ValueError(f"{store.path} is tokenized with {theirs['kind']} (vocab {theirs['vocab_size']}), but the "
                         f"model was trained with {ours['kind']} (vocab {ours['vocab_size']})")
    batch_size = batch_size or config.train.batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive; got {batch_size}")
    result = evaluate_store(fns, params, store, split, config.data.seq_len, batch_size, max_tokens, progress)
    return {"checkpoint": str(files.step_dir), "step": files.step, "model": config.model.name, **result}


def format_table(result: dict) -> str:
    rows = [
        ("checkpoint", result["checkpoint"]), ("step", result["step"]), ("data", f"{result['data']} [{result['split']}]"),
        ("tokens", f"{result['tokens']:,} ({result['windows']} windows of {result['seq_len']})"),
        ("loss", f"{result['loss']:.4f} nats/token"), ("perplexity", f"{result['perplexity']:.3f}"),
        ("bits per byte", f"{result['bpb']:.4f} ({result['bytes_per_token']:.3f} bytes/token)"),
        ("time", f"{result['seconds']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
