"""KV-cache decoding against the full forward pass, greedy and seeded sampling, and the CLI."""

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.cli.workflow import add_parsers
from scalelab.infer.generate import Sampling, generate_tokens, sample_next
from scalelab.model.functional import ModelFns
from scalelab.model.transformer import ModelSpec

VOCAB, EOS, KNOWN = 64, 63, 60  # padded vocab, end-of-document id, ids the "tokenizer" knows


@functools.cache
def tiny_model(n_heads: int, n_kv_heads: int):
    """A small random model (fns, params, jitted full forward); weights with std 0.2, so that
    attention is far from uniform. Cached: the tests share its compilations."""
    spec = ModelSpec.build(d_model=32, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=64, vocab=VOCAB,
                     head_dim=32 // n_heads)
    fns = ModelFns(spec)
    rng = np.random.default_rng(0)

    def draw(shape):  # numpy, not fns.init: compiling the initialisers costs seconds on a busy CPU
        noise = rng.normal(0.0, 0.2, shape).astype(np.float32)
        return jnp.asarray(1.0 + noise if len(shape) == 1 else noise)  # 1-D: norm scales around 1

    params = jax.tree.map(draw, fns.shapes, is_leaf=lambda x: isinstance(x, tuple))
    return fns, params, jax.jit(fns.apply)


B, T = 3, 16  # every full forward pass below has this shape, so it compiles once per model


# The cached decoder against the model's own forward pass, over the shapes and ways of computing a
# model can train with on this machine. Each case: (heads, kv heads, tied, parametrization, compute
# dtype, attention kernel of the full forward pass, logits' relative tolerance). bf16 rounds the
# activations of each path at its own points (2^-8 relative): its tolerance is a few bf16 steps.
DECODE_CASES = {
    "mha-untied-standard-fp32-blockwise": (2, 2, False, "standard", "float32", "blockwise", 1e-4),
    "gqa-tied-standard-fp32-xla": (4, 1, True, "standard", "float32", "xla", 1e-4),
    "gqa-untied-mup-fp32-blockwise": (4, 2, False, "mup", "float32", "blockwise", 1e-4),
    "mha-tied-mup-fp32-xla": (2, 2, True, "mup", "float32", "xla", 1e-4),
    "gqa-untied-standard-bf16-blockwise": (4, 1, False, "standard", "bfloat16", "blockwise", 1e-2),
    "mha-tied-standard-bf16-xla": (2, 2, True, "standard", "bfloat16", "xla", 1e-2),
}
DECODE_PROMPTS = [[EOS, 5, 9], [EOS, 1, 2, 3, 4, 5, 6, 7, 8, 9], [EOS, 40, 41, 42, 43, 44]]
DECODE_NEW, DECODE_CONTEXT = 48, 64


def random_model(n_heads, n_kv_heads, tied, parametrization, compute_dtype, attention, std=0.2, **moe):
    spec = ModelSpec.build(seq_len=DECODE_CONTEXT, d_model=32, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads,
                           d_ff=64, vocab=VOCAB, head_dim=32 // n_heads, tied_embeddings=tied,
                           parametrization=parametrization, mup_base_width=16, compute_dtype=compute_dtype,
                           attention=attention, **moe)
    fns = ModelFns(spec)
    rng = np.random.default_rng(1)

    def draw(shape):
        noise = rng.normal(0.0, std, shape).astype(np.float32)
        return jnp.asarray(1.0 + noise if len(shape) == 1 else noise)

    return fns, jax.tree.map(draw, fns.shapes, is_leaf=lambda x: isinstance(x, tuple))


def full_forward_greedy(apply, params, prompts, n_new: int, vocab_limit: int = KNOWN):
    """Greedy decoding with no cache: the full forward pass over every whole prefix, one padded block
    of DECODE_CONTEXT tokens per step; (new tokens per prompt, the logits each was chosen from)."""
    seqs, chosen_from = [list(p) for p in prompts], [[] for _ in prompts]
    for _ in range(n_new):
        padded_BxT = np.full((len(seqs), DECODE_CONTEXT), EOS, np.int32)
        for row, seq in enumerate(seqs):
            padded_BxT[row, : len(seq)] = seq
        logits_BxTxV = np.asarray(apply(params, padded_BxT), np.float32)
        for row, seq in enumerate(seqs):
            logits_V = logits_BxTxV[row, len(seq) - 1]
            chosen_from[row].append(logits_V)
            seq.append(int(np.argmax(np.where(np.arange(len(logits_V)) < vocab_limit, logits_V, -np.inf))))
    return [s[len(p):] for s, p in zip(seqs, prompts, strict=True)], [np.stack(c) for c in chosen_from]


def assert_decoding_matches_the_full_forward(fns, params, prompts, rtol, vocab_limit=KNOWN, eos=EOS):
    """Greedy cached decoding of ragged prompts in one batch: its logits at every generated position
    equal the full forward pass's over the same tokens (within `rtol` of the logits' scale); every
    token it chose is the full forward's argmax over the prefix before it (greedy decoding without a
    cache, by causality); and in fp32 it equals a real uncached greedy loop token for token. (That
    loop pads its prefixes to one block shape, which in bf16 rounds otherwise and splits exact ties.)"""
    got = generate_tokens(fns, params, prompts, max_new_tokens=DECODE_NEW, eos_id=eos, vocab_limit=vocab_limit,
                          stop_at_eos=False, keep_logits=True, context=DECODE_CONTEXT)
    apply = jax.jit(fns.apply)
    for row, prompt in enumerate(prompts):  # the full forward over exactly what the decoder produced
        assert len(got.tokens[row]) == DECODE_NEW
        seq_T = np.concatenate([prompt, got.tokens[row]])[None].astype(np.int32)
        full_TxV = np.asarray(apply(params, seq_T), np.float32)[0, len(prompt) - 1: -1]
        scale = np.abs(full_TxV).max()
        error = np.abs(got.logits[row] - full_TxV).max() / scale
        assert error <= rtol, f"prompt {row}: cached logits differ from the full forward by {error:.2e} of their scale"
        best_T = np.where(np.arange(full_TxV.shape[1]) < vocab_limit, full_TxV, -np.inf).max(axis=1)
        off = np.flatnonzero(full_TxV[np.arange(DECODE_NEW), got.tokens[row]] < best_T)
        assert not len(off), f"prompt {row}: new token {off[:1]} is not the full forward's greedy choice"
    if fns.spec.compute_dtype in ("float32", "fp32"):
        uncached, _ = full_forward_greedy(apply, params, prompts, DECODE_NEW, vocab_limit)
        for row, (cached, plain) in enumerate(zip(got.tokens, uncached, strict=True)):
            first = next((i for i, (a, b) in enumerate(zip(cached, plain)) if a != b), None)
            assert first is None, f"prompt {row}: cached greedy decoding leaves the uncached one at new token {first}"


@pytest.mark.parametrize("case", list(DECODE_CASES), ids=list(DECODE_CASES))
def test_cached_decoding_computes_what_the_full_forward_computes(case):
    *model, rtol = DECODE_CASES[case]
    fns, params = random_model(*model)
    assert_decoding_matches_the_full_forward(fns, params, DECODE_PROMPTS, rtol)


@pytest.mark.parametrize("dispatch, factor", [("capacity", 0.5), ("dropless", 1.0)])
def test_cached_decoding_of_a_mixture_of_experts_computes_what_the_full_forward_computes(dispatch, factor):
    """Capacity 0.5 drops assignments in the full forward pass; the cache counts each expert's
    claimed slots per position, so a decoded token is dropped exactly when the forward drops it."""
    moe = dict(experts=4, top_k=2, d_expert=16, moe_every=1, moe_dispatch=dispatch, capacity_factor=factor)
    fns, params = random_model(2, 2, False, "standard", "float32", "xla", **moe)
    if dispatch == "capacity":
        stats: list = []
        fns.apply(params, jnp.asarray(np.arange(DECODE_CONTEXT)[None] % KNOWN, jnp.int32), moe_stats=stats)
        assert float(stats[0]["dropped"]) > 0
    assert_decoding_matches_the_full_forward(fns, params, DECODE_PROMPTS, 1e-4)


def test_cached_decoding_of_an_imported_hugging_face_model(tmp_path):
    from scalelab.data.tokenizer import ByteTokenizer
    from scalelab.infer.load import load_model
    from scalelab.interop.hf.directory import export_hf

    fns, params = random_model(4, 2, False, "standard", "float32", "blockwise")
    tokenizer = ByteTokenizer()
    fns = ModelFns(fns.spec.replace(vocab=-(-tokenizer.vocab_size // 8) * 8))
    params = {**params, **{k: jnp.asarray(np.random.default_rng(2).normal(0, 0.2, fns.shapes[k]), jnp.float32)
                          for k in ("embed", "lm_head")}}
    export_hf(tmp_path / "model", fns.spec, params, tokenizer, max_positions=DECODE_CONTEXT)
    loaded_fns, loaded_params, loaded_tokenizer, config = load_model(f"hf:{tmp_path / 'model'}")
    assert int(config.data.seq_len) == DECODE_CONTEXT  # the context the model was exported with
    eos = loaded_tokenizer.eos_id
    prompts = [[eos, *loaded_tokenizer.encode(text)] for text in ("def main(", "import os\n", "x = [1, 2")]
    assert_decoding_matches_the_full_forward(loaded_fns, loaded_params, prompts, 1e-4,
                                             vocab_limit=loaded_tokenizer.vocab_size, eos=eos)


def test_a_cache_shifted_by_one_position_is_caught(monkeypatch):
    """The check above fails when the decoded tokens' positions are one past the prompt's (RoPE makes
    a shift of every position, prompt included, invisible: only relative positions count)."""
    from scalelab.infer import generate as generation

    fns, params = random_model(2, 2, False, "standard", "float32", "blockwise")

    def shifted(f, p, tokens_BxT, caches):
        T = tokens_BxT.shape[1]
        positions_BxT = caches[0].length_B[:, None] + (1 if T == 1 else 0) + jnp.arange(T)
        return f.module(p)(tokens_BxT, positions_BxT, caches)

    monkeypatch.setattr(generation, "forward_with_cache", shifted)
    generation._COMPILED.clear()
    with pytest.raises(AssertionError, match="cached logits differ"):
        assert_decoding_matches_the_full_forward(fns, params, DECODE_PROMPTS, 1e-4)
    generation._COMPILED.clear()


def test_seeded_sampling_gives_a_prompt_the_same_text_alone_or_in_a_batch():
    fns, params = random_model(4, 1, False, "standard", "float32", "blockwise")
    hot = Sampling(temperature=1.0, top_k=20, top_p=0.95)
    draw = lambda prompts, seed=7: [list(t) for t in generate_tokens(
        fns, params, prompts, max_new_tokens=24, eos_id=EOS, vocab_limit=KNOWN, sampling=hot, seed=seed).tokens]
    batch = draw(DECODE_PROMPTS)
    assert [draw([prompt])[0] for prompt in DECODE_PROMPTS] == batch
    assert draw(DECODE_PROMPTS[::-1]) == batch[::-1]  # nor does its row matter
    assert draw(DECODE_PROMPTS, seed=8) != batch


def test_generation_past_the_trained_context_is_refused_naming_the_limit():
    fns, params = random_model(2, 2, False, "standard", "float32", "blockwise")
    with pytest.raises(ValueError, match=r"\+ --max-new-tokens=55 exceeds the model's context of 64 tokens "
                                         r"\(data.seq_len of the run\): at most 54 new tokens fit"):
        generate_tokens(fns, params, DECODE_PROMPTS, max_new_tokens=55, eos_id=EOS, vocab_limit=KNOWN,
                        context=DECODE_CONTEXT)
    assert len(generate_tokens(fns, params, DECODE_PROMPTS, max_new_tokens=54, eos_id=EOS, vocab_limit=KNOWN,
                               context=DECODE_CONTEXT, stop_at_eos=False).tokens[1]) == 54  # exactly fills it


PROMPTS = [[EOS, 5, 9], [EOS, 1, 2, 3, 4, 5, 6], [EOS, 40, 41, 42, 43]]
NEW = 8


def naive_greedy(prompts, n_new: int) -> list[list[int]]:
    """Greedy decoding by a full forward pass over every whole prefix (no cache), in one padded batch."""
    _, params, apply = tiny_model(4, 1)
    seqs = [list(p) for p in prompts]
    for _ in range(n_new):
        padded_BxT = np.zeros((B, T), np.int32)
        for row, seq in enumerate(seqs):
            padded_BxT[row, : len(seq)] = seq
        logits_BxTxV = np.asarray(apply(params, padded_BxT))
        for row, seq in enumerate(seqs):
            if seq[-1] != EOS or len(seq) == len(prompts[row]):
                logits = logits_BxTxV[row, len(seq) - 1]
                seq.append(int(np.argmax(np.where(np.arange(VOCAB) < KNOWN, logits, -np.inf))))
    return [s[len(p):][: s[len(p):].index(EOS) + 1] if EOS in s[len(p):] else s[len(p):]
            for s, p in zip(seqs, prompts, strict=True)]


def generate(sampling=None, seed=0):
    fns, params, _ = tiny_model(4, 1)
    return generate_tokens(fns, params, PROMPTS, max_new_tokens=NEW, eos_id=EOS, vocab_limit=KNOWN,
                           sampling=sampling or Sampling(), seed=seed)


def test_greedy_generation_is_deterministic_and_matches_uncached_decoding():
    first, again = generate(), generate()
    assert [list(t) for t in first.tokens] == [list(t) for t in again.tokens]
    assert again.compile_seconds < first.compile_seconds  # the second call reuses the compilation
    assert [list(t) for t in first.tokens] == naive_greedy(PROMPTS, NEW)
    assert all(0 <= t < KNOWN for row in first.tokens for t in row)  # never a padding id
    assert first.new_tokens == sum(len(t) for t in first.tokens) and first.tokens_per_second > 0


def test_seeded_sampling_is_reproducible_and_differs_across_seeds():
    hot = Sampling(temperature=1.5, top_k=40)
    a, b, c = ([list(t) for t in generate(hot, seed).tokens] for seed in (1, 1, 2))
    assert a == b and a != c
    assert all(0 <= t < KNOWN for row in a + c for t in row)
    # top_k=1 leaves one candidate: sampling then is greedy, whatever the temperature and seed
    assert [list(t) for t in generate(Sampling(temperature=2.0, top_k=1), seed=3).tokens] == naive_greedy(PROMPTS, NEW)


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
    probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
    logits_1xV = jnp.asarray(np.log(probs))[None]
    keys = jax.random.split(jax.random.key(0), 400)  # 400 draws, one key each (rows of a batch share one)
    draw = jax.jit(jax.vmap(sample_next, in_axes=(None, 0, None, None, None, None)), static_argnums=5)

    def draws(sampling, vocab_limit=4):
        return set(np.asarray(draw(logits_1xV, keys, *sampling.as_arrays(), vocab_limit)).ravel().tolist())

    assert draws(Sampling(temperature=1.0)) == {0, 1, 2, 3}
    assert draws(Sampling(temperature=1.0, top_p=0.7)) == {0, 1}  # 0.5 + 0.3 reach 0.7
    assert draws(Sampling(temperature=1.0, top_k=3)) == {0, 1, 2}
    # top-p applies to the top-k renormalised: (0.5 + 0.3) / 0.95 = 0.84 reaches 0.83 (0.5 + 0.3 alone would not)
    assert draws(Sampling(temperature=1.0, top_k=3, top_p=0.83)) == {0, 1}
    assert draws(Sampling(temperature=1.0), vocab_limit=2) == {0, 1}  # unknown ids are never drawn
    assert draws(Sampling(temperature=0.0)) == {0}
    with pytest.raises(ValueError, match="top-p"):
        Sampling(top_p=0).check()


def cli(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_generate_command_on_a_trained_run(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "gen.json"
    assert cli(["generate", str(run_dir), "--prompt", "def ", "--prompt", "import os", "--max-new-tokens", "12",
                "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert "--- prompt 1" in printed.out and "def " in printed.out and "tokens/s" in printed.err
    result = json.loads(out.read_text())
    assert [c["prompt"] for c in result["completions"]] == ["def ", "import os"]
    assert all(1 <= len(c["tokens"]) <= 12 for c in result["completions"]) and result["tokens_per_second"] > 0
    # the run's context is data.seq_len=32 tokens
    with pytest.raises(ValueError, match="context of 32 tokens"):
        cli(["generate", str(run_dir), "--prompt", "x" * 40])
    with pytest.raises(ValueError, match="at most 12 new tokens"):
        cli(["generate", str(run_dir), "--prompt", "y" * 19, "--max-new-tokens", "13"])
    with pytest.raises(FileNotFoundError, match="no such run"):
        cli(["generate", str(tmp_path / "nowhere"), "--prompt", "x"])
