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
from omegaconf import DictConfig, OmegaConf, open_dict

from scalelab.data import tokenizer as tokenizers
from scalelab.model.functional import ModelFns
from scalelab.model.transformer import ModelSpec
from scalelab.runfiles import HYDRA
from scalelab.train import hf_checkpoint
from scalelab.train.checkpoint import CheckpointFiles, find_checkpoint, restore_params


class LoadedModel(NamedTuple):
    fns: ModelFns
    params: dict
    tokenizer: object
    config: DictConfig


def run_config(files: CheckpointFiles) -> DictConfig:
    if "config" in files.meta:
        return OmegaConf.create(files.meta["config"])
    if "config" in files.summary:
        return OmegaConf.create(files.summary["config"])
    hydra_config = files.run_dir / HYDRA / "config.yaml" if files.run_dir else None
    if hydra_config and hydra_config.exists():
        return OmegaConf.load(hydra_config)
    raise FileNotFoundError(f"{files.step_dir}: cannot find the run's config (checkpoint meta, summary.json or "
                            f".hydra/config.yaml)")


def dataset_path(files: CheckpointFiles, config: DictConfig) -> str | None:
    return files.summary.get("data", {}).get("path") or config.data.get("path")


def run_tokenizer(files: CheckpointFiles, config: DictConfig):
    if "tokenizer" in files.meta:
        return tokenizers.from_dict(files.meta["tokenizer"])
    path = dataset_path(files, config)
    if path and (Path(path) / tokenizers.TOKENIZER_FILE).exists():
        return tokenizers.load(path)
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
    from hydra import compose, initialize_config_dir

    from scalelab.configs import CONFIG_DIR

    model = hf_checkpoint.load_hf(directory)
    if model.tokenizer is None:
        raise FileNotFoundError(f"{directory}: no tokenizer.json beside the model (eval and generate need one)")
    seq_len = seq_len or hf_checkpoint.max_positions(directory)
    arch = {k: v for k, v in model.config.items() if k != "vocab"}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose(config_name="train", overrides=["data=prepared", f"data.seq_len={seq_len}"])
    with open_dict(config):
        config.model.update(arch)
    fns = ModelFns(ModelSpec.from_config(config, model.tokenizer.vocab_size))
    params = jax.tree.map(jax.numpy.asarray, model.params)
    return LoadedModel(fns, params, model.tokenizer, config)


def load_checkpoint(files: CheckpointFiles) -> LoadedModel:
    config = run_config(files)
    # the attention kernels compute the same function: pick the one for the machine that loads the
    # model (a run trained with cudnn on a GPU is evaluated on a CPU with blockwise attention)
    config.model.attention = "auto"
    tokenizer = run_tokenizer(files, config)
    fns = ModelFns(ModelSpec.from_config(config, tokenizer.vocab_size))
    params = restore_params(files.step_dir, jax.eval_shape(fns.init, 0), source="checkpoint")
    return LoadedModel(fns, params, tokenizer, config)
