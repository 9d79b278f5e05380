"""`scalelab eval`: loss, perplexity and bits per byte of a checkpoint on a dataset split.

Also home of `load_model`, which `scalelab generate` shares: from a run directory (its newest
checkpoint) or one checkpoint step directory to the model functions, restored parameters,
tokenizer and resolved config. Where each comes from, in order of preference:
  config     the checkpoint's `meta` (written by training), the run's `summary.json["config"]`,
             the run's `.hydra/config.yaml`
  tokenizer  the checkpoint's `meta`, the run's dataset (`tokenizer.json`), byte for the stdlib corpus
  params     `<checkpoint>/state`, restoring only the `params` subtree of {"step", "params", "opt_state"}

The loss is the mean next-token cross-entropy (nats per token) over the packed windows of the
split (`data.seq_len` of the run; the same windows training evaluates on), all of them or the
first `max_tokens // seq_len`. Bits per byte divide by the split's bytes per token from the
dataset manifest, as training does, so they compare across tokenizers.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from omegaconf import DictConfig, OmegaConf

from scalelab.data import tokenizer as tokenizers
from scalelab.data.pipeline import Windows
from scalelab.data.store import TokenStore
from scalelab.model import ModelSpec
from scalelab.step import ModelFns

CHECKPOINTS = "checkpoints"


class LoadedModel(NamedTuple):
    fns: ModelFns
    params: dict
    tokenizer: object
    config: DictConfig


@dataclass
class CheckpointFiles:
    """Where one checkpoint and the run around it live."""

    step_dir: Path
    step: int
    run_dir: Path | None  # None when the step dir is not inside a run's checkpoints/
    meta: dict  # the checkpoint's own metadata (step, tokenizer, config), {} if absent
    summary: dict  # the run's summary.json, {} if absent


def find_checkpoint(path: str | Path) -> CheckpointFiles:
    """A run dir (its newest checkpoint), its `checkpoints/` dir, or a `checkpoints/<step>/` dir."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run or checkpoint: {path}")
    path = path.resolve()
    if (path / "state").is_dir():
        step_dir = path
    else:
        parent = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        steps = sorted((int(p.name), p) for p in parent.iterdir() if p.name.isdigit() and (p / "state").is_dir())
        if not steps:
            raise FileNotFoundError(f"{path}: no checkpoint found (expected a run dir with checkpoints/<step>/, "
                                    f"or a checkpoint step dir holding state/)")
        step_dir = steps[-1][1]
    run_dir = step_dir.parent.parent if step_dir.parent.name == CHECKPOINTS else None
    meta_file = step_dir / "meta" / "metadata"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    summary_file = run_dir / "summary.json" if run_dir else None
    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.exists() else {}
    step = int(meta.get("step", step_dir.name if step_dir.name.isdigit() else -1))
    return CheckpointFiles(step_dir=step_dir, step=step, run_dir=run_dir, meta=meta, summary=summary)


def run_config(files: CheckpointFiles) -> DictConfig:
    if "config" in files.meta:
        return OmegaConf.create(files.meta["config"])
    if "config" in files.summary:
        return OmegaConf.create(files.summary["config"])
    hydra_config = files.run_dir / ".hydra" / "config.yaml" if files.run_dir else None
    if hydra_config and hydra_config.exists():
        return OmegaConf.load(hydra_config)
    raise FileNotFoundError(f"{files.step_dir}: cannot find the run's config (checkpoint meta, summary.json or "
                            f".hydra/config.yaml)")


def _dataset_path(files: CheckpointFiles, config: DictConfig) -> str | None:
    return files.summary.get("data", {}).get("path") or config.data.get("path")


def run_tokenizer(files: CheckpointFiles, config: DictConfig):
    if "tokenizer" in files.meta:
        return tokenizers.from_dict(files.meta["tokenizer"])
    path = _dataset_path(files, config)
    if path and (Path(path) / tokenizers.TOKENIZER_FILE).exists():
        return tokenizers.load(path)
    if config.data.source == "stdlib":
        return tokenizers.ByteTokenizer()
    raise FileNotFoundError(f"{files.step_dir}: cannot find the tokenizer (not in the checkpoint's meta, and the "
                            f"run's dataset {path} has no {tokenizers.TOKENIZER_FILE})")


def restore_params(step_dir: Path, abstract_params) -> dict:
    """Only the parameters of a checkpoint's state, on the first device."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                     abstract_params)}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            step_dir / "state",
            args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                        partial_restore=True),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{step_dir}: the checkpoint's parameters do not fit the run's model config ({exc})") from exc
    return restored["params"]


def load_model(run_or_checkpoint: str | Path) -> LoadedModel:
    """(fns, params, tokenizer, config) of a run's newest checkpoint or of one checkpoint."""
    return load_checkpoint(find_checkpoint(run_or_checkpoint))


def load_checkpoint(files: CheckpointFiles) -> LoadedModel:
    config = run_config(files)
    # the attention kernels compute the same function: pick the one for the machine that loads the
    # model (a run trained with cudnn on a GPU is evaluated on a CPU with blockwise attention)
    config.model.attention = "auto"
    tokenizer = run_tokenizer(files, config)
    fns = ModelFns(ModelSpec.from_config(config, tokenizer.vocab_size))
    params = restore_params(files.step_dir, jax.eval_shape(fns.init, 0))
    return LoadedModel(fns, params, tokenizer, config)


# ---- evaluation -------------------------------------------------------------------------------

def open_eval_store(data: str | None, files: CheckpointFiles, config: DictConfig) -> TokenStore:
    """`--data`: a prepared dataset dir, `stdlib`, or (None) the dataset the run trained on."""
    if data == "stdlib" or (data is None and config.data.source == "stdlib"):
        from scalelab.data.stdlib import open_stdlib

        return open_stdlib(config.data.val_fraction)
    if data is not None:
        return TokenStore(data)
    path = _dataset_path(files, config)
    if not path:
        raise ValueError("the run records no dataset path; name one with --data DIR")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"the run's dataset {path} is not there (moved, or a path relative to another "
                                f"directory); name it with --data DIR")
    return TokenStore(path)


@functools.lru_cache(maxsize=8)
def loss_sum_fn(spec: ModelSpec):
    """Jitted (params, windows BxT+1, weights B) -> summed next-token cross-entropy of the weighted rows.

    One per model shape, so evaluating several checkpoints of a run compiles once.
    """
    fns = ModelFns(spec)

    def loss_sum(params, windows_BxT1, weights_B):
        inputs_BxT, targets_BxT = windows_BxT1[:, :-1], windows_BxT1[:, 1:]
        logits_BxTxV = fns.apply(params, inputs_BxT).astype(jnp.float32)
        nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
        return jnp.sum(nll_BxT.sum(axis=1) * weights_B)

    return jax.jit(loss_sum)


def evaluate_store(fns: ModelFns, params, store: TokenStore, split: str, seq_len: int, batch_size: int,
                   max_tokens: int | None = None, progress: bool = False) -> dict:
    """Mean loss over the first windows of `split` (all of them, or max_tokens // seq_len)."""
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
    batches = range(0, n, batch_size)
    for start in _progress(batches, progress, "eval"):
        rows = [windows[i] for i in range(start, min(start + batch_size, n))]
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
    """Evaluate a run's newest checkpoint (or one checkpoint); the result as a JSON-ready dict."""
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
