"""KV-cache decoding against the full forward pass, greedy and seeded sampling, and the CLI."""

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab.cli.workflow import add_parsers
from scalelab.infer.generate import Sampling, empty_caches, forward_with_cache, generate_tokens, sample_next
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


@pytest.mark.parametrize("heads", [(2, 2), (4, 1)], ids=["mha", "gqa"])
def test_cached_decoding_gives_the_full_forward_logits_at_every_position(heads):
    fns, params, apply = tiny_model(*heads)
    rng = np.random.default_rng(0)
    tokens_BxT = rng.integers(0, KNOWN, (B, T)).astype(np.int32)
    full_BxTxV = np.asarray(apply(params, tokens_BxT))
    lengths = np.array([2, 6, 4], np.int32)  # ragged prompts, right-padded in one prefill block
    P = int(lengths.max())
    forward = jax.jit(lambda p, t, c: forward_with_cache(fns, p, t, c))
    prefill_BxPxV, caches = forward(params, tokens_BxT[:, :P], empty_caches(fns.spec, B, T))
    for b in range(B):  # every real prompt position
        np.testing.assert_allclose(prefill_BxPxV[b, : lengths[b]], full_BxTxV[b, : lengths[b]], atol=2e-5, rtol=1e-5)
    caches = [c.replace(length_B=jnp.asarray(lengths)) for c in caches]  # padding slots get overwritten
    for i in range(T - P):  # then one token at a time, each row at its own position
        positions = lengths + i
        token_B = tokens_BxT[np.arange(B), positions]
        logits_Bx1xV, caches = forward(params, token_B[:, None], caches)
        np.testing.assert_allclose(logits_Bx1xV[:, 0], full_BxTxV[np.arange(B), positions], atol=2e-5, rtol=1e-5)


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
    logits_BxV = jnp.asarray(np.log(np.tile(probs, (400, 1))))
    draw = jax.jit(sample_next, static_argnums=5)

    def draws(sampling, vocab_limit=4):
        return set(np.asarray(draw(logits_BxV, jax.random.key(0), *sampling.as_arrays(), vocab_limit)).tolist())

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
