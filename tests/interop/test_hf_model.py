"""Export to and import from the Hugging Face Llama format: same logits, exact round trips, refusals."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.interop.hf import convert as hf
from scalelab.interop.hf import directory as hfc
from scalelab.model.transformer import ModelSpec

try:
    from scalelab.model.functional import ModelFns
except ImportError:  # before the model package split
    from scalelab.train.step import ModelFns

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4  # fp32, max abs logit difference


def tiny_spec(n_kv_heads: int, tied: bool, head_dim: int = 8) -> ModelSpec:
    fields = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=48, vocab=264, head_dim=head_dim,
                  tied_embeddings=tied, rope_theta=500.0, norm_eps=1e-5, attention="xla")
    return ModelSpec.build(seq_len=16, **fields) if hasattr(ModelSpec, "build") else ModelSpec(**fields)


def sharp_params(fns: ModelFns, seed: int) -> dict:
    """`fns.init` redrawn at unit scale with norm scales away from 1, so that attention is sharp and a
    wrong RoPE layout, head order or norm assignment moves the logits far beyond TOL."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        if path[-1] == "scale":
            return jnp.asarray(1 + 0.3 * rng.standard_normal(x.shape), jnp.float32)
        fan_in = 1 if path[-1] == "embed" else (x.shape[0] * x.shape[1] if path[-1] == "wo" else x.shape[0])
        return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(fan_in), jnp.float32)

    def walk(tree, path=()):
        return {k: walk(v, (*path, k)) for k, v in tree.items()} if isinstance(tree, dict) else draw(path, tree)

    return walk(fns.init(seed))


def tokens(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (2, 12))


def hf_logits(directory, tokens_BxT) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    assert model.dtype == torch.float32
    with torch.no_grad():
        return model(torch.as_tensor(tokens_BxT)).logits.numpy()


def scalelab_logits(fns, params, tokens_BxT) -> np.ndarray:
    return np.asarray(fns.apply(params, jnp.asarray(tokens_BxT)), np.float32)


@pytest.mark.parametrize("n_kv_heads,tied", [(4, False), (2, True), (2, False), (1, True)])
def test_exported_model_gives_scalelab_logits_in_transformers(tmp_path, n_kv_heads, tied):
    from scalelab.data.tokenizer import ByteTokenizer

    fns = ModelFns(tiny_spec(n_kv_heads, tied))
    params = sharp_params(fns, seed=n_kv_heads)
    written = hfc.export_hf(tmp_path, fns.spec, params, ByteTokenizer(), max_positions=16)
    assert {p.name for p in written} >= {"config.json", "model.safetensors", "tokenizer.json"}
    ids = tokens(fns.spec.vocab)
    ours, theirs = scalelab_logits(fns, params, ids), hf_logits(tmp_path, ids)
    assert np.abs(ours - theirs).max() <= TOL
    assert np.abs(ours).max() > 1.0  # the logits are not all near zero: the comparison means something
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and config["eos_token_id"] == 256 and config["vocab_size"] == 264
    assert ("lm_head.weight" in hf.read_weights(tmp_path)) is not tied
    config, imported, tokenizer = hfc.load_hf(tmp_path)
    assert tokenizer.kind == "byte" and config["vocab_multiple"] == 8  # 257 ids padded to 264 rows
    assert np.array_equal(imported["embed"], np.asarray(params["embed"]))


def test_the_rope_layout_is_what_the_comparison_checks(tmp_path):
    """Interleaving each head's rotary pairs (Meta's layout) instead of halves must break the match."""
    fns = ModelFns(tiny_spec(2, False))
    params = sharp_params(fns, seed=7)
    H = fns.spec.head_dim
    interleave = np.concatenate([np.arange(0, H, 2), np.arange(1, H, 2)])
    wrong = {**params, "blocks": {i: {**b, "attn": {**b["attn"], "wq": b["attn"]["wq"][..., interleave],
                                                    "wk": b["attn"]["wk"][..., interleave]}}
                                  for i, b in params["blocks"].items()}}
    hfc.export_hf(tmp_path, fns.spec, wrong)
    ids = tokens(fns.spec.vocab)
    assert np.abs(scalelab_logits(fns, params, ids) - hf_logits(tmp_path, ids)).max() > 100 * TOL


def random_hf_model(tmp_path, tied: bool, head_dim: int = 8, **save):
    """A random LlamaForCausalLM (norm weights away from 1) saved with save_pretrained; its directory."""
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=head_dim, rms_norm_eps=1e-5, rope_theta=250.0, max_position_embeddings=64,
        tie_word_embeddings=tied, initializer_range=0.25)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path, **save)
    return tmp_path


@pytest.mark.parametrize("tied,head_dim", [(False, 8), (True, 8), (False, 16)])
def test_transformers_model_imports_with_the_same_logits_and_round_trips_bitwise(tmp_path, tied, head_dim):
    src = random_hf_model(tmp_path / "hf", tied, head_dim)
    config, params, tokenizer = hfc.load_hf(src)
    assert tokenizer is None and config["head_dim"] == head_dim and config["tied_embeddings"] is tied
    assert config["rope_theta"] == 250.0 and config["norm_eps"] == 1e-5 and config["vocab"] == 96
    fns = ModelFns(hf.model_spec(config, attention="xla"))
    ids = tokens(96, seed=1)
    assert np.abs(scalelab_logits(fns, params, ids) - hf_logits(src, ids)).max() <= TOL

    hfc.export_hf(tmp_path / "back", fns.spec, params)
    original, exported = hf.read_weights(src), hf.read_weights(tmp_path / "back")
    original.pop("lm_head.weight", None) if tied else None  # a tied model's head is the embedding
    assert sorted(original) == sorted(exported)
    assert all(np.array_equal(original[k], exported[k]) and original[k].dtype == exported[k].dtype for k in original)
    config2, params2, _ = hfc.load_hf(tmp_path / "back")
    assert {k: v for k, v in config2.items() if k != "name"} == {k: v for k, v in config.items() if k != "name"}
    flat = lambda t, p="": [x for k, v in t.items() for x in flat(v, f"{p}/{k}")] if isinstance(t, dict) else [(p, t)]
    assert all(np.array_equal(a, b) and pa == pb for (pa, a), (pb, b) in zip(flat(params), flat(params2)))


def test_sharded_and_bfloat16_checkpoints_import(tmp_path):
    src = random_hf_model(tmp_path / "sharded", tied=False, max_shard_size="20KB")
    assert (src / hf.INDEX_FILE).exists() and not (src / hf.WEIGHTS_FILE).exists()
    config, params, _ = hfc.load_hf(src)
    fns = ModelFns(hf.model_spec(config, attention="xla"))
    ids = tokens(96, seed=2)
    assert np.abs(scalelab_logits(fns, params, ids) - hf_logits(src, ids)).max() <= TOL

    model = transformers.AutoModelForCausalLM.from_pretrained(src).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    config, params, _ = hfc.load_hf(tmp_path / "bf16")
    assert config["param_dtype"] == "bfloat16" and params["embed"].dtype.name == "bfloat16"
    expected = model.model.embed_tokens.weight.detach().float().numpy()
    assert np.array_equal(params["embed"].astype(np.float32), expected)


def test_model_config_round_trips_through_config_json():
    spec = tiny_spec(2, True)
    config = hf.model_config(hf.hf_config(spec))
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab", "head_dim", "tied_embeddings",
                "rope_theta", "norm_eps"):
        assert config[key] == getattr(spec, key), key
    assert hf.vocab_multiple(257, 264) == 8 and hf.vocab_multiple(264, 264) == 1 and hf.vocab_multiple(300, 320) == 32


BASE = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.mark.parametrize("change,field", [
    ({"hidden_size": None}, "hidden_size"),
    ({"vocab_size": None}, "vocab_size"),
    ({"model_type": None}, "model_type"),
    ({"model_type": "gpt2"}, "model_type"),
    ({"architectures": ["LlamaModel"]}, "architectures"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope_parameters.rope_type"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"head_dim": 7}, "head_dim"),
    ({"num_hidden_layers": 2.5}, "num_hidden_layers"),
])
def test_configs_that_do_not_map_are_refused_naming_the_field(change, field):
    config = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(hf.HFConfigError, match=f"^{field}: ") as raised:
        hf.model_config(config)
    assert raised.value.field == field
    defaults = hf.model_config({**BASE, "num_key_value_heads": None})  # LlamaConfig's defaults fill the rest
    assert (defaults["n_kv_heads"], defaults["head_dim"], defaults["rope_theta"]) == (4, 8, 10000.0)


def test_weights_that_do_not_map_are_refused_naming_the_tensor(tmp_path):
    src = random_hf_model(tmp_path / "hf", tied=False)
    config = hf.model_config(json.loads((src / "config.json").read_text()))
    state = hf.read_weights(src)
    with pytest.raises(hf.HFConfigError, match=r"^model.layers.0.self_attn.q_proj.bias: "):
        hf.from_hf_state({**state, "model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}, config)
    with pytest.raises(hf.HFConfigError, match=r"^lm_head.weight: missing"):
        hf.from_hf_state({k: v for k, v in state.items() if k != "lm_head.weight"}, config)
    with pytest.raises(hf.HFConfigError, match=r"^model.norm.weight: has shape \(31,\)"):
        hf.from_hf_state({**state, "model.norm.weight": np.ones(31, np.float32)}, config)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="safe_serialization"):
        hfc.load_hf(src)


def tiny_moe_spec(dispatch: str = "dropless", **fields) -> ModelSpec:
    return tiny_spec(2, False).replace(experts=4, top_k=2, d_expert=24, moe_dispatch=dispatch, **fields)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_an_moe_model_exports_as_mixtral_with_scalelab_logits_and_round_trips(tmp_path, dispatch):
    """Capacity at factor E/top_k (C = seq_len: nothing can drop) computes what Mixtral (dropless) does."""
    fns = ModelFns(tiny_moe_spec(dispatch, capacity_factor=2.0))
    params = sharp_params(fns, seed=3)
    hfc.export_hf(tmp_path, fns.spec, params)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 4
    ids = tokens(fns.spec.vocab)
    ours, theirs = scalelab_logits(fns, params, ids), hf_logits(tmp_path, ids)
    assert np.abs(ours - theirs).max() <= TOL and np.abs(ours).max() > 1.0
    imported, imported_params, _ = hfc.load_hf(tmp_path)
    assert imported["moe"] == {"experts": 4, "top_k": 2, "every": 1, "shared_experts": 0, "d_expert": 24,
                               "dispatch": "dropless"}
    back = ModelFns(hf.model_spec(imported, seq_len=16, attention="xla"))
    assert np.array_equal(np.asarray(imported_params["blocks"]["1"]["mlp"]["w_down"]),
                          np.asarray(params["blocks"]["1"]["mlp"]["w_down"]))
    assert np.abs(scalelab_logits(back, imported_params, ids) - ours).max() <= 1e-6


def test_moe_shapes_mixtral_lacks_are_refused_naming_the_key():
    with pytest.raises(hf.HFConfigError, match="^model.moe.every"):
        hf.hf_config(tiny_moe_spec(moe_every=2))
    with pytest.raises(hf.HFConfigError, match="^model.moe.shared_experts"):
        hf.hf_config(tiny_moe_spec(shared_experts=1))
