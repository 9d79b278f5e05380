"""scalelab models in the Hugging Face Llama format (`LlamaForCausalLM`), and back; MoE models
in the Mixtral format (`MixtralForCausalLM`).

A Hugging Face model directory holds config.json, the weights as model.safetensors (or shards
listed in model.safetensors.index.json) and the tokenizer files (`scalelab.data.tokenizer_files`).
scalelab's Transformer is a Llama: pre-norm RMSNorm blocks, rotary embeddings, grouped-query
attention without biases, a SwiGLU MLP, tied or untied output. The conversion here is exact:

  scalelab parameter                 HF tensor (torch Linear weights are out x in)
  embed             VxD              model.embed_tokens.weight        VxD
  blocks.i.attn.wq  DxNxH            model.layers.i.self_attn.q_proj  (N*H)xD   row n*H + h
  blocks.i.attn.wk/wv DxKxH          ...k_proj / v_proj               (K*H)xD
  blocks.i.attn.wo  NxHxD            ...o_proj                        Dx(N*H)
  blocks.i.mlp.w_gate/w_up DxF       model.layers.i.mlp.gate_proj/up_proj  FxD
  blocks.i.mlp.w_down FxD            ...down_proj                     DxF
  blocks.i.attn_norm / mlp_norm      ...input_layernorm / post_attention_layernorm
  final_norm.scale                   model.norm.weight
  lm_head           DxV              lm_head.weight VxD (absent when tied)

An MoE model (every block an MoE layer, no shared experts: Mixtral's architecture) maps its MLP to
Mixtral's `block_sparse_moe` (the checkpoint layout on the Hub, which transformers 4.x loads as it
is and 5.x fuses on loading): `router` DxE -> `gate.weight` ExD, and expert j's `w_gate[j]`,
`w_down[j]`, `w_up[j]` -> `experts.j.w1`, `w2`, `w3` (FxD, DxF, FxD). Mixtral routes as scalelab
does (softmax, top-k, renormalised) and computes every assignment, which is scalelab's dropless
dispatch; a capacity-trained model exports as it is, and HF's logits equal scalelab's wherever no
assignment was dropped (`moe.capacity_factor` large enough, or short inputs). Import reads both
the Hub layout and the fused one (`mlp.experts.gate_up_proj`, `down_proj`) and imports dropless.

The q and k weights need no permutation: scalelab rotates the two halves of each head
(`apply_rotary`: [x1 cos - x2 sin, x2 cos + x1 sin] with x1, x2 the first and second half), which
is exactly HF Llama's `rotate_half` layout. (Meta's original checkpoints rotate interleaved pairs,
which is why HF's own conversion script permutes; scalelab's layout already is HF's.) Both scale
scores by head_dim**-0.5, group query head n with kv head n // (N/K) and compute RMSNorm as
x * rsqrt(mean(x^2) + eps) * weight, and both use inv_freq = theta^(-2i/H).

Everything here works on plain dicts and numpy arrays (no JAX, no torch): `load_hf` gives the
model config (scalelab `model.*` keys, plus `vocab`) and the parameter dict. A config.json that
asks for something scalelab does not compute (another activation, biases, scaled RoPE, ...) is
refused with `HFConfigError`, whose message starts with the HF field.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scalelab.model.transformer import ModelSpec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
ARCHITECTURE = "LlamaForCausalLM"
MOE_ARCHITECTURE = "MixtralForCausalLM"
MODEL_TYPES = ("llama", "mixtral")
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class HFConfigError(ValueError):
    """A Hugging Face config that does not map onto scalelab's model; the message starts with the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


# ---- config.json <-> scalelab model config ------------------------------------------------------

def hf_config(spec, max_positions: int = 2048, eos_id: int | None = None, bos_id: int | None = None) -> dict:
    """The config.json of a scalelab model (a `ModelSpec`, or anything with its attributes).

    `rope_theta` is written both at the top level (transformers 4.x) and in `rope_parameters`
    (transformers 5.x); `max_positions` (the context trained on) only informs HF's generation.
    """
    if getattr(spec, "parametrization", "standard") != "standard":
        raise HFConfigError("model.parametrization", f"a {spec.parametrization} model's logit multiplier and "
                                                     "1/head_dim attention have no Llama config field; only "
                                                     "standard models export")
    if spec.d_model % spec.n_heads:
        raise HFConfigError("num_attention_heads", f"transformers' LlamaConfig needs hidden_size={spec.d_model} to "
                                                   f"be a multiple of num_attention_heads={spec.n_heads}")
    theta = float(spec.rope_theta)
    return _moe_fields(spec) | {
        "architectures": [MOE_ARCHITECTURE if _experts(spec) else ARCHITECTURE],
        "model_type": "mixtral" if _experts(spec) else "llama",
        "vocab_size": int(spec.vocab),  # the padded vocabulary: the embedding's rows
        "hidden_size": int(spec.d_model),
        "intermediate_size": int(spec.shape.d_expert if _experts(spec) else spec.d_ff),
        "num_hidden_layers": int(spec.n_layers),
        "num_attention_heads": int(spec.n_heads),
        "num_key_value_heads": int(spec.n_kv_heads),
        "head_dim": int(spec.head_dim),
        "hidden_act": "silu",
        "max_position_embeddings": int(max_positions),
        "rms_norm_eps": float(spec.norm_eps),
        "rope_theta": theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": bool(spec.tied_embeddings),
        "initializer_range": float(getattr(spec, "init_std", 0.02)),
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "torch_dtype": "float32",  # export writes float32 weights (bfloat16 parameters upcast exactly)
        "use_cache": True,
    }


def _experts(spec) -> int:
    shape = getattr(spec, "shape", None)
    return getattr(shape, "experts", 0) if shape is not None else 0


def _moe_fields(spec) -> dict:
    """Mixtral's config fields of an MoE spec (nothing for a dense one); what Mixtral lacks is refused."""
    if not _experts(spec):
        return {}
    s = spec.shape
    if s.moe_every != 1:
        raise HFConfigError("model.moe.every", f"Mixtral makes every block an MoE layer; got every={s.moe_every}")
    if s.shared_experts:
        raise HFConfigError("model.moe.shared_experts", "Mixtral has no shared experts; got "
                                                        f"{s.shared_experts}")
    return {"num_local_experts": int(s.experts), "num_experts_per_tok": int(s.top_k),
            "router_aux_loss_coef": float(getattr(spec, "moe_aux_loss", 0.01)), "output_router_logits": False,
            "router_jitter_noise": 0.0, "sliding_window": None}


def _int_field(hf: dict, name: str, default=None) -> int:
    """A positive integer field; absent or null takes `default` (LlamaConfig's), if there is one."""
    value = default if hf.get(name) is None else hf[name]
    if value is None:
        raise HFConfigError(name, "missing from config.json; scalelab cannot infer it")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HFConfigError(name, f"must be a positive integer; got {value!r}")
    return value


def _check_supported(hf: dict) -> None:
    """Refuse the config.json fields whose values change what the model computes away from scalelab's."""
    if "model_type" not in hf:
        raise HFConfigError("model_type", "missing from config.json (scalelab reads model_type=llama)")
    if hf["model_type"] not in MODEL_TYPES:
        raise HFConfigError("model_type", f"scalelab reads {', '.join(MODEL_TYPES)} models; got {hf['model_type']!r}")
    wanted = MOE_ARCHITECTURE if hf["model_type"] == "mixtral" else ARCHITECTURE
    architectures = hf.get("architectures") or [wanted]
    if wanted not in architectures:
        raise HFConfigError("architectures", f"needs {wanted} (a language-model head); got {architectures}")
    if hf["model_type"] == "mixtral" and hf.get("sliding_window"):
        raise HFConfigError("sliding_window", f"scalelab attends to the whole context; got {hf['sliding_window']}")
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise HFConfigError("hidden_act", f"scalelab's MLP is SwiGLU (silu); got {hf['hidden_act']!r}")
    for name in ("attention_bias", "mlp_bias"):
        if hf.get(name, False):
            raise HFConfigError(name, "scalelab's projections have no biases; got true")
    if hf.get("quantization_config"):
        raise HFConfigError("quantization_config", "quantized weights are not supported; export unquantized ones")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFConfigError("partial_rotary_factor", "scalelab rotates the whole head; got "
                                                     f"{hf['partial_rotary_factor']}")
    scaling = hf.get("rope_scaling")
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in ("default", None):
        raise HFConfigError("rope_scaling", f"scalelab's RoPE is unscaled; got {scaling}")
    rope_type = (hf.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type != "default":
        raise HFConfigError("rope_parameters.rope_type", f"scalelab's RoPE is unscaled (default); got {rope_type!r}")


def model_config(hf: dict) -> dict:
    """scalelab's model config (`model.*` keys, plus the padded `vocab`) of an HF config.json dict.

    Optional fields take LlamaConfig's defaults, so this is the model transformers itself builds
    from the same file; the fields that size the model are required. `vocab_multiple` is 1 (the
    vocabulary as it is); see `vocab_multiple` for training with a tokenizer of fewer ids.
    """
    _check_supported(hf)
    d_model, n_heads = _int_field(hf, "hidden_size"), _int_field(hf, "num_attention_heads")
    for name in REQUIRED:
        _int_field(hf, name)
    n_kv_heads = _int_field(hf, "num_key_value_heads", n_heads)
    if n_heads % n_kv_heads:
        raise HFConfigError("num_key_value_heads", f"must divide num_attention_heads={n_heads}; got {n_kv_heads}")
    head_dim = _int_field(hf, "head_dim", d_model // n_heads if d_model % n_heads == 0 else None)
    if head_dim % 2:
        raise HFConfigError("head_dim", f"must be even for rotary embeddings; got {head_dim}")
    rope = hf.get("rope_parameters") or {}
    moe = {}
    if hf["model_type"] == "mixtral":
        experts = _int_field(hf, "num_local_experts", 8)
        moe = {"moe": {"experts": experts, "top_k": _int_field(hf, "num_experts_per_tok", 2), "every": 1,
                       "shared_experts": 0, "d_expert": _int_field(hf, "intermediate_size"),
                       "dispatch": "dropless"}}
    return moe | {
        "d_model": d_model,
        "n_layers": _int_field(hf, "num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "d_ff": _int_field(hf, "intermediate_size"),
        "head_dim": head_dim,
        "tied_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "init_std": float(hf.get("initializer_range", 0.02)),
        "vocab": _int_field(hf, "vocab_size"),
        "vocab_multiple": 1,
        "param_dtype": "float32",  # `load_hf` sets what the weights hold
    }


def vocab_multiple(tokenizer_vocab: int, vocab: int) -> int:
    """A `model.vocab_multiple` that pads a tokenizer of `tokenizer_vocab` ids to exactly `vocab` rows."""
    if tokenizer_vocab > vocab:
        raise HFConfigError("vocab_size", f"the model has {vocab} embedding rows, fewer than the tokenizer's "
                                          f"{tokenizer_vocab} ids")
    candidates = [1, *(2**k for k in range(1, 16)), vocab]
    return next(m for m in candidates if -(-tokenizer_vocab // m) * m == vocab)


def model_spec(config: dict, seq_len: int = 2048, **compute):
    """A `ModelSpec` of a `model_config` dict; `compute` sets compute_dtype, attention, remat."""
    arch = {k: config[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab", "head_dim",
                                   "tied_embeddings")}
    rest = {k: config[k] for k in ("rope_theta", "norm_eps", "init_std", "param_dtype") if k in config}
    moe = config.get("moe") or {}
    if moe.get("experts"):
        arch |= {"experts": moe["experts"], "top_k": moe["top_k"], "d_expert": moe["d_expert"],
                 "shared_experts": moe.get("shared_experts", 0), "moe_every": moe.get("every", 1)}
        rest |= {"moe_dispatch": moe.get("dispatch", "dropless")}
    return ModelSpec.build(seq_len=seq_len, **arch, **rest, **compute)


# ---- parameters <-> HF state dict -------------------------------------------------------------

def _dims(config) -> tuple[int, int, int, int]:
    get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k))
    return get("d_model"), get("n_heads"), get("n_kv_heads"), get("head_dim")


def _block_to_hf(block: dict, D: int, N: int, K: int, H: int) -> dict:
    """One block's HF tensors (names after `model.layers.i.`)."""
    attn, mlp = block["attn"], block["mlp"]
    wq_DxNxH, wk_DxKxH = _array(attn["wq"]), _array(attn["wk"])
    wv_DxKxH, wo_NxHxD = _array(attn["wv"]), _array(attn["wo"])
    if "router" in mlp:  # Mixtral's block_sparse_moe
        mlp_state = {"block_sparse_moe.gate.weight": _array(mlp["router"]).T}
        for j, (gate_DxF, up_DxF, down_FxD) in enumerate(zip(*(_array(mlp[k]) for k in ("w_gate", "w_up", "w_down")))):
            mlp_state |= {f"block_sparse_moe.experts.{j}.w1.weight": gate_DxF.T,
                          f"block_sparse_moe.experts.{j}.w2.weight": down_FxD.T,
                          f"block_sparse_moe.experts.{j}.w3.weight": up_DxF.T}
    else:
        mlp_state = {"mlp.gate_proj.weight": _array(mlp["w_gate"]).T, "mlp.up_proj.weight": _array(mlp["w_up"]).T,
                     "mlp.down_proj.weight": _array(mlp["w_down"]).T}
    return mlp_state | {
        "self_attn.q_proj.weight": wq_DxNxH.reshape(D, N * H).T,
        "self_attn.k_proj.weight": wk_DxKxH.reshape(D, K * H).T,
        "self_attn.v_proj.weight": wv_DxKxH.reshape(D, K * H).T,
        "self_attn.o_proj.weight": wo_NxHxD.reshape(N * H, D).T,
        "input_layernorm.weight": _array(block["attn_norm"]["scale"]),
        "post_attention_layernorm.weight": _array(block["mlp_norm"]["scale"]),
    }


def _array(x) -> np.ndarray:
    """A host numpy copy; bfloat16 becomes float32 (exactly), since safetensors.numpy has no bfloat16."""
    a = np.asarray(x)
    return a.astype(np.float32) if a.dtype.name == "bfloat16" else a


def to_hf_state(params: dict, config) -> dict[str, np.ndarray]:
    """The HF state dict (contiguous numpy arrays) of a scalelab parameter dict; `config` is a
    `ModelSpec` or a `model_config` dict. Tied models have no lm_head.weight, as HF saves them."""
    D, N, K, H = _dims(config)
    state = {"model.embed_tokens.weight": _array(params["embed"]), "model.norm.weight": _array(params["final_norm"]["scale"])}
    for i, block in sorted(params["blocks"].items(), key=lambda kv: int(kv[0])):
        for name, value in _block_to_hf(block, D, N, K, H).items():
            state[f"model.layers.{int(i)}.{name}"] = value
    if "lm_head" in params:
        state["lm_head.weight"] = _array(params["lm_head"]).T
    return {name: np.ascontiguousarray(value) for name, value in state.items()}


def _take(state: dict, name: str, shape: tuple) -> np.ndarray:
    if name not in state:
        raise HFConfigError(name, "missing from the weights")
    value = state.pop(name)
    if tuple(value.shape) != tuple(shape):
        raise HFConfigError(name, f"has shape {tuple(value.shape)}; config.json implies {tuple(shape)}")
    return value


def _block_from_hf(state: dict, prefix: str, config: dict) -> dict:
    D, N, K, H = _dims(config)
    F = config["d_ff"]
    take = lambda name, shape: _take(state, prefix + name, shape)
    return {
        "attn": {
            "wq": take("self_attn.q_proj.weight", (N * H, D)).T.reshape(D, N, H),
            "wk": take("self_attn.k_proj.weight", (K * H, D)).T.reshape(D, K, H),
            "wv": take("self_attn.v_proj.weight", (K * H, D)).T.reshape(D, K, H),
            "wo": take("self_attn.o_proj.weight", (D, N * H)).T.reshape(N, H, D),
        },
        "attn_norm": {"scale": take("input_layernorm.weight", (D,))},
        "mlp": _moe_from_hf(state, prefix, config) if (config.get("moe") or {}).get("experts") else {
            "w_gate": take("mlp.gate_proj.weight", (F, D)).T,
            "w_up": take("mlp.up_proj.weight", (F, D)).T,
            "w_down": take("mlp.down_proj.weight", (D, F)).T,
        },
        "mlp_norm": {"scale": take("post_attention_layernorm.weight", (D,))},
    }


def _moe_from_hf(state: dict, prefix: str, config: dict) -> dict:
    """A Mixtral MLP's parameters, from the Hub layout (experts.j.w1/w2/w3) or the fused one."""
    D, E, F = config["d_model"], config["moe"]["experts"], config["moe"]["d_expert"]
    take = lambda name, shape: _take(state, prefix + name, shape)
    if prefix + "mlp.experts.gate_up_proj" in state:  # transformers 5.x's own save_pretrained
        gate_up_Ex2FxD = take("mlp.experts.gate_up_proj", (E, 2 * F, D))
        return {"router": take("mlp.gate.weight", (E, D)).T,
                "w_gate": gate_up_Ex2FxD[:, :F].transpose(0, 2, 1), "w_up": gate_up_Ex2FxD[:, F:].transpose(0, 2, 1),
                "w_down": take("mlp.experts.down_proj", (E, D, F)).transpose(0, 2, 1)}
    expert = lambda j, w, shape: take(f"block_sparse_moe.experts.{j}.{w}.weight", shape).T
    return {"router": take("block_sparse_moe.gate.weight", (E, D)).T,
            "w_gate": np.stack([expert(j, "w1", (F, D)) for j in range(E)]),
            "w_up": np.stack([expert(j, "w3", (F, D)) for j in range(E)]),
            "w_down": np.stack([expert(j, "w2", (D, F)) for j in range(E)])}


def from_hf_state(state: dict[str, np.ndarray], config: dict) -> dict:
    """scalelab's parameter dict (contiguous numpy arrays) of an HF state dict, checked against `config`.

    A tensor that is missing, mis-shaped or left over is an HFConfigError naming it (left-over
    tensors would be parts of the model scalelab does not compute, biases say). Rotary `inv_freq`
    buffers that old checkpoints carry are ignored, and so is lm_head.weight of a tied model.
    """
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    prefix = "model." if "model.embed_tokens.weight" in state else ""
    D, V = config["d_model"], config["vocab"]
    params = {
        "embed": _take(state, prefix + "embed_tokens.weight", (V, D)),
        "blocks": {str(i): _block_from_hf(state, f"{prefix}layers.{i}.", config) for i in range(config["n_layers"])},
        "final_norm": {"scale": _take(state, prefix + "norm.weight", (D,))},
    }
    if config["tied_embeddings"]:
        state.pop("lm_head.weight", None)
    else:
        params["lm_head"] = _take(state, "lm_head.weight", (V, D)).T
    if state:
        raise HFConfigError(sorted(state)[0], f"a weight scalelab's model has no place for ({len(state)} left over)")
    return tree_map(np.ascontiguousarray, params)


def tree_map(fn, tree):
    return {k: tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


# ---- safetensors -------------------------------------------------------------------------------

def write_safetensors(state: dict[str, np.ndarray], path: str | Path) -> Path:
    """One safetensors file, with the `format: pt` metadata transformers expects."""
    from safetensors.numpy import save_file

    save_file(state, str(path), metadata={"format": "pt"})
    return Path(path)


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of one safetensors file. bfloat16 ones (most published checkpoints), which
    safetensors.numpy cannot read, are read here from the file's header as ml_dtypes.bfloat16."""
    path = Path(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    if not any(info["dtype"] == "BF16" for info in header.values()):
        from safetensors.numpy import load_file

        return load_file(str(path))
    import ml_dtypes
    from safetensors.numpy import _TYPES

    dtypes = {**_TYPES, "BF16": ml_dtypes.bfloat16}
    data = np.fromfile(path, dtype=np.uint8, offset=8 + header_len)
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        out[name] = data[start:end].view(dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def read_weights(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of an HF model directory: model.safetensors, or the shards its index lists."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file():
        return read_safetensors(directory / WEIGHTS_FILE)
    if (directory / INDEX_FILE).is_file():
        weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        state = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_safetensors(directory / shard))
        return state
    others = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt*"))
    hint = f" (it has {', '.join(others)}: re-save with save_pretrained(..., safe_serialization=True))" if others else ""
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")


def weights_dtype(state: dict[str, np.ndarray]) -> str:
    """scalelab's param_dtype for the weights: bfloat16 if they all are, else float32."""
    names = {v.dtype.name for v in state.values()}
    return "bfloat16" if names == {"bfloat16"} else "float32"
