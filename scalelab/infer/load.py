"""Load a trained model: from a run directory (its newest checkpoint) or one checkpoint step
directory to the model functions, restored parameters, tokenizer and resolved config.

Where each comes from, in order of preference:
  config     the checkpoint's `meta` (written by training), the run's `summary.json["config"]`,
             the run's `.hydra/config.yaml`
  tokenizer  the checkpoint's `meta`, the run's dataset (`tokenizer.json`), byte for the stdlib corpus
  params     `<checkpoint>/state`, restoring only the `params` subtree of {"step", "params", "opt_state"}
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import yaml

from scalelab.config import Config
from scalelab.data import tokenizer as tokenizers
from scalelab.data import tokenizer_files
from scalelab.interop.hf import directory as hf_checkpoint
from scalelab.model.functional import ModelFns
from scalelab.runfiles import HYDRA
from scalelab.train.build import default_settings, model_spec, recorded_settings
from scalelab.train.checkpoint import CheckpointFiles, find_checkpoint, restore_params


class LoadedModel(NamedTuple):
    fns: ModelFns
    params: dict
    tokenizer: object
    config: Config  # the run's config, typed (scalelab/config.py's schema)


def run_config(files: CheckpointFiles) -> Config:
    if "config" in files.meta:
        return recorded_settings(files.meta["config"])
    if "config" in files.summary:
        return recorded_settings(files.summary["config"])
    hydra_config = files.run_dir / HYDRA / "config.yaml" if files.run_dir else None
    if hydra_config and hydra_config.exists():
        return recorded_settings(yaml.safe_load(hydra_config.read_text()))
    raise FileNotFoundError(f"{files.step_dir}: cannot find the run's config (checkpoint meta, summary.json or "
                            f".hydra/config.yaml)")


def dataset_path(files: CheckpointFiles, config: Config) -> str | None:
    return files.summary.get("data", {}).get("path") or config.data.path


def run_tokenizer(files: CheckpointFiles, config: Config):
    if "tokenizer" in files.meta:
        return tokenizers.from_dict(files.meta["tokenizer"])
    path = dataset_path(files, config)
    if path and (Path(path) / tokenizers.TOKENIZER_FILE).exists():
        return tokenizer_files.load(path)
    if config.data.source == "stdlib":
        return tokenizers.ByteTokenizer()
    raise FileNotFoundError(f"{files.step_dir}: cannot find the tokenizer (not in the checkpoint's meta, and the "
                            f"run's dataset {path} has no {tokenizers.TOKENIZER_FILE})")


def load_model(run_or_checkpoint: str | Path) -> LoadedModel:
    """(fns, params, tokenizer, config) of a run's newest checkpoint, of one checkpoint, or of a
    Hugging Face model directory (`hf:DIR`)."""
    directory = hf_checkpoint.hf_dir(str(run_or_checkpoint))
    if directory is not None:
        return load_hf_model(directory)
    return load_checkpoint(find_checkpoint(run_or_checkpoint))


def load_hf_model(directory: Path, seq_len: int | None = None) -> LoadedModel:
    """A Hugging Face Llama directory as a loaded model (its tokenizer is required).

    Its context (`data.seq_len`, which bounds generation) is `seq_len`, else the directory's
    `max_position_embeddings` (scalelab's export writes the context it trained on), else 2048.
    """
    model = hf_checkpoint.load_hf(directory)
    if model.tokenizer is None:
        raise FileNotFoundError(f"{directory}: no tokenizer.json beside the model (eval and generate need one)")
    seq_len = seq_len or hf_checkpoint.max_positions(directory)
    arch = {k: v for k, v in model.config.items() if k != "vocab"}
    config = default_settings(["data=prepared", f"data.seq_len={seq_len}"])
    for key, value in arch.items():
        setattr(config.model, key, value)
    fns = ModelFns(model_spec(config, model.tokenizer.vocab_size))
    params = jax.tree.map(jax.numpy.asarray, model.params)
    return LoadedModel(fns, params, model.tokenizer, config)


def load_checkpoint(files: CheckpointFiles) -> LoadedModel:
    config = run_config(files)
    # the attention kernels compute the same function: pick the one for the machine that loads the
    # model (a run trained with cudnn on a GPU is evaluated on a CPU with blockwise attention)
    config.model.attention = "auto"
    tokenizer = run_tokenizer(files, config)
    fns = ModelFns(model_spec(config, tokenizer.vocab_size))
    params = restore_params(files.step_dir, jax.eval_shape(fns.init, 0), source="checkpoint")
    return LoadedModel(fns, params, tokenizer, config)
