"""Hugging Face model directories as checkpoints: write one from a trained model (`scalelab export
hf`), read one for fine-tuning (`init_from=hf:DIR`), evaluation and generation.

The weight and config mapping is scalelab/interop/hf/convert.py; the tokenizer files are
scalelab/data/tokenizer_files.py; this module puts the two together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from scalelab.data import tokenizer_files as hf_tokenizer
from scalelab.interop.hf.convert import (
    CONFIG_FILE,
    INDEX_FILE,
    WEIGHTS_FILE,
    from_hf_state,
    hf_config,
    model_config,
    read_weights,
    to_hf_state,
    tree_map,
    vocab_multiple,
    weights_dtype,
    write_safetensors,
)
from scalelab.runfiles import CHECKPOINTS


class HFError(ValueError):
    """A Hugging Face directory that cannot initialise this run (its tokenizer or shapes differ)."""


# ---- directories ---------------------------------------------------------------------------------

class HFModel(NamedTuple):
    """What `load_hf` reads: scalelab's model config, parameter dict and tokenizer (None if absent)."""

    config: dict
    params: dict
    tokenizer: object


def export_hf(out: str | Path, spec, params: dict, tokenizer=None, max_positions: int = 2048,
              overwrite: bool = False) -> list[Path]:
    """Write a `LlamaForCausalLM` (an MoE model: `MixtralForCausalLM`) directory: config.json, model.safetensors and, given a scalelab
    tokenizer, its tokenizer files. Returns the files written."""
    out = Path(out)
    names = [CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE, *(hf_tokenizer.FILES if tokenizer is not None else ())]
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    if tokenizer is not None and tokenizer.vocab_size > spec.vocab:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {spec.vocab} rows")
    config = hf_config(spec, max_positions, eos_id=None if tokenizer is None else int(tokenizer.eos_id))
    state = to_hf_state(params, spec)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).unlink(missing_ok=True)  # a stale shard index would describe other weights
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    written = [out / CONFIG_FILE, write_safetensors(state, out / WEIGHTS_FILE)]
    if tokenizer is not None:
        written += hf_tokenizer.save_hf_tokenizer(tokenizer, out, model_max_length=max_positions)
    return written


def load_hf(directory: str | Path, eos_token: str | None = None) -> HFModel:
    """(model config, params, tokenizer or None) of a Hugging Face Llama directory.

    The config has scalelab's `model.*` keys (`name`, d_model, n_layers, n_heads, n_kv_heads, d_ff,
    head_dim, tied_embeddings, rope_theta, norm_eps, init_std, vocab_multiple, param_dtype) plus
    `vocab`, the embedding's rows (not a `model.*` key: scalelab derives it from the tokenizer and
    vocab_multiple, which is set so that the directory's own tokenizer gives exactly `vocab`).
    Parameters are numpy arrays, bfloat16 if all the weights are, else float32.
    """
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_FILE} (not a Hugging Face model directory)")
    config = {"name": directory.resolve().name, **model_config(json.loads((directory / CONFIG_FILE).read_text()))}
    state = read_weights(directory)
    config["param_dtype"] = weights_dtype(state)
    params = from_hf_state(state, config)
    if config["param_dtype"] == "float32":  # float16 or mixed weights: scalelab keeps float32 parameters
        params = tree_map(lambda a: a if a.dtype == np.float32 else a.astype(np.float32), params)
    tokenizer = None
    if (directory / hf_tokenizer.TOKENIZER_JSON).is_file():
        tokenizer = hf_tokenizer.load_hf_tokenizer(directory, eos_token)
        config["vocab_multiple"] = vocab_multiple(tokenizer.vocab_size, config["vocab"])
    return HFModel(config, params, tokenizer)


def max_positions(directory: str | Path, default: int = 2048) -> int:
    """The context a Hugging Face directory's model declares (`max_position_embeddings`)."""
    config = json.loads((Path(directory) / CONFIG_FILE).read_text())
    return int(config.get("max_position_embeddings") or default)


# ---- init_from=hf:DIR ----------------------------------------------------------------------------

HF_PREFIX = "hf:"


def hf_dir(init_from: str | None) -> Path | None:
    """The directory of an `init_from` that names a Hugging Face model (`hf:DIR`, or a directory
    holding a config.json and no scalelab checkpoints), else None."""
    if not init_from:
        return None
    if init_from.startswith(HF_PREFIX):
        return Path(init_from[len(HF_PREFIX):])
    path = Path(init_from)
    return path if (path / CONFIG_FILE).is_file() and not (path / CHECKPOINTS).exists() else None


def architecture(directory: Path) -> dict:
    """The `model.*` keys a Hugging Face directory's config.json sets (its `vocab` too), for
    `init_from=hf:DIR`: the architecture comes from the pretrained model, not from `model=`."""
    hf = json.loads((directory / CONFIG_FILE).read_text()) if (directory / CONFIG_FILE).is_file() else None
    if hf is None:
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
    arch = model_config(hf)
    keys = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "head_dim", "tied_embeddings", "rope_theta",
            "norm_eps", "vocab")
    return {"name": f"hf-{directory.resolve().name}", **{k: arch[k] for k in keys}}


def init_params(init_from: str, abstract_params, shardings, tokenizer) -> dict:
    """The pretrained parameters of an HF directory, checked against the run and placed on its mesh."""
    import jax

    model = load_hf(hf_dir(init_from))
    if model.tokenizer is not None and model.tokenizer.to_dict() != tokenizer.to_dict():
        raise HFError(f"init_from={init_from}: the model's tokenizer differs from the one this run's data "
                         f"was prepared with (prepare it with `--tokenizer {hf_dir(init_from)}/tokenizer.json`)")
    ours = jax.tree.map(lambda a: tuple(a.shape), abstract_params)
    theirs = jax.tree.map(lambda a: tuple(a.shape), model.params)
    if ours != theirs:
        raise HFError(f"init_from={init_from}: parameter shapes differ from the run's model ({theirs} vs {ours})")
    params = jax.tree.map(lambda a, ab: np.asarray(a).astype(ab.dtype), model.params, abstract_params)
    return jax.device_put(params, shardings)
