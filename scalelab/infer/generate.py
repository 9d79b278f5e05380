"""`scalelab generate`: sampling from a checkpoint with a KV cache, batched over prompts.

How one call works (all of it one jitted function):
  1. prompts are tokenized, each preceded by the end-of-document id (the model saw documents start
     after it), and right-padded into a BxP block;
  2. prefill: one forward pass over the block fills every layer's cache; row b's next-token
     logits are those at its last real position, L_b - 1;
  3. decode: a `lax.while_loop` feeds the newest token of every row at position L_b + i, writing
     its keys and values into the cache at that index, until `max_new_tokens` or every row has
     produced end-of-document.
Right padding needs no position offsets: a row's padding sits at cache indices >= L_b, which are
never attended to (the causal mask is by position) and are overwritten by the row's own new
tokens before any later query can see them.

The cache attends with the model's own CPU formula (`attention.masked_attention`, which the
blockwise kernel's blocks call too), so that decoding computes what the full forward pass computes;
tests/infer/test_generate.py holds the logits of every generated position against it.

Sampling: temperature 0 is greedy; otherwise logits / temperature, then optional top-k and top-p
(nucleus) filtering, then a categorical draw from a key derived from --seed and the step, the same
key for every row: a prompt gets the same text alone or in a batch, wherever it sits (two equal
prompts get equal text: vary --seed for several samples). Ids the tokenizer does not know
(vocabulary padding) are never produced. The sampling settings and the seed are runtime arguments:
one compiled function per (model, prompt block shape, max new tokens).

A prompt plus the new tokens must fit the model's context, `data.seq_len` of the run (for an `hf:`
directory its `max_position_embeddings`): RoPE would compute positions beyond it, but the model
never trained on them. A longer request is refused, naming --max-new-tokens and how many fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from scalelab.model import attention
from scalelab.model.functional import ModelFns
from scalelab.model.transformer import DTYPES, ModelSpec


@struct.dataclass
class KVCache:
    """One layer's keys and values for a batch: S slots per row, the first `length_B[b]` filled."""

    k_BxSxKxH: jax.Array
    v_BxSxKxH: jax.Array
    length_B: jax.Array  # int32; row b's next token is written at index length_B[b] (= its position)
    # an MoE layer with capacity dispatch: the expert slots each position claimed (its kept
    # assignments), so that a new token queues behind the earlier ones as in the forward pass
    claimed_BxSxE: jax.Array | None = None

    @classmethod
    def empty(cls, batch: int, size: int, n_kv_heads: int, head_dim: int, dtype, experts: int = 0) -> KVCache:
        zeros = jnp.zeros((batch, size, n_kv_heads, head_dim), dtype)
        claimed = jnp.zeros((batch, size, experts), jnp.int32) if experts else None
        return cls(zeros, zeros, jnp.zeros((batch,), jnp.int32), claimed)

    def attend(self, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH):
        """Write the T new keys/values at each row's length, attend causally; (out BxTxNxH, new cache)."""
        T, S = q_BxTxNxH.shape[1], self.k_BxSxKxH.shape[1]
        write = jax.vmap(lambda buf, new, start: jax.lax.dynamic_update_slice_in_dim(buf, new, start, axis=0))
        k_BxSxKxH = write(self.k_BxSxKxH, k_BxTxKxH.astype(self.k_BxSxKxH.dtype), self.length_B)
        v_BxSxKxH = write(self.v_BxSxKxH, v_BxTxKxH.astype(self.v_BxSxKxH.dtype), self.length_B)
        query_pos_BxT = self.length_B[:, None] + jnp.arange(T, dtype=jnp.int32)
        visible_BxTxS = jnp.arange(S, dtype=jnp.int32)[None, None, :] <= query_pos_BxT[:, :, None]
        out_BxTxNxH = attention.masked_attention(q_BxTxNxH, k_BxSxKxH.astype(q_BxTxNxH.dtype),
                                                 v_BxSxKxH.astype(q_BxTxNxH.dtype), visible_BxTxS)
        return out_BxTxNxH, KVCache(k_BxSxKxH, v_BxSxKxH, self.length_B + T, self.claimed_BxSxE)

    # the MoE layer calls these after `attend`, which has moved length_B past the T new tokens
    def filled(self, n_tokens: int):
        """Slots of each expert claimed by each row's positions before the new tokens: BxE."""
        start_B = self.length_B - n_tokens
        before_BxS = jnp.arange(self.claimed_BxSxE.shape[1])[None, :] < start_B[:, None]
        return jnp.sum(self.claimed_BxSxE * before_BxS[:, :, None], axis=1)

    def claim(self, experts_BxTxK, kept_BxTxK, n_experts: int) -> KVCache:
        """The cache with the new tokens' kept assignments written at their positions."""
        claimed_BxTxE = jnp.sum(jax.nn.one_hot(experts_BxTxK, n_experts, dtype=jnp.int32) * kept_BxTxK[..., None],
                                axis=2)
        write = jax.vmap(lambda buf, new, start: jax.lax.dynamic_update_slice_in_dim(buf, new, start, axis=0))
        start_B = self.length_B - experts_BxTxK.shape[1]
        return self.replace(claimed_BxSxE=write(self.claimed_BxSxE, claimed_BxTxE, start_B))


def empty_caches(spec: ModelSpec, batch: int, size: int) -> list[KVCache]:
    dtype = DTYPES[spec.compute_dtype]
    s = spec.shape
    claims = lambda layer: s.experts if s.is_moe_layer(layer) and spec.moe_dispatch == "capacity" else 0
    return [KVCache.empty(batch, size, spec.n_kv_heads, spec.head_dim, dtype, claims(layer))
            for layer in range(spec.n_layers)]


def forward_with_cache(fns: ModelFns, params: dict, tokens_BxT, caches: list[KVCache]):
    """Logits of T new tokens per row, placed after what the caches hold; (logits BxTxV, new caches)."""
    positions_BxT = caches[0].length_B[:, None] + jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32)
    return fns.module(params)(tokens_BxT, positions_BxT, caches)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def check(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--temperature must be zero or positive; got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be zero (off) or positive; got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must lie in (0, 1]; got {self.top_p}")

    def as_arrays(self) -> tuple:
        """Runtime arguments of the decode function: one compilation serves every setting."""
        return jnp.float32(self.temperature), jnp.int32(self.top_k), jnp.float32(self.top_p)


def sample_next(logits_BxV, key, temperature, top_k, top_p, vocab_limit: int):
    """One token id per row from next-token logits; ids >= vocab_limit are never chosen.

    temperature 0 is greedy; otherwise the logits are scaled by 1/temperature, cut to the top_k
    likeliest (0: all), then to the smallest set whose probability reaches top_p (nucleus), and drawn
    from. All three are traced values, so changing them does not recompile.
    """
    V = logits_BxV.shape[-1]
    logits_BxV = jnp.where(jnp.arange(V) < vocab_limit, logits_BxV.astype(jnp.float32), -jnp.inf)
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scaled_BxV = logits_BxV / jnp.where(temperature > 0, temperature, 1.0)
    sorted_BxV = -jnp.sort(-scaled_BxV, axis=-1)  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab_limit), vocab_limit)
    in_top_k_V = jnp.arange(V) < k
    probs_BxV = jax.nn.softmax(jnp.where(in_top_k_V, sorted_BxV, -jnp.inf), axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # probability of the tokens ranked above
    kept_BxV = in_top_k_V & ((mass_before_BxV < top_p) | (top_p >= 1))  # the top token is always kept
    n_kept_B = jnp.sum(kept_BxV, axis=-1)
    threshold_Bx1 = jnp.take_along_axis(sorted_BxV, (n_kept_B - 1)[:, None], axis=-1)
    filtered_BxV = jnp.where(scaled_BxV < threshold_Bx1, -jnp.inf, scaled_BxV)
    # every row draws with the same key: a prompt's sample depends on the seed and its own logits,
    # not on which row of the batch it sits in or what the other rows hold
    sampled_B = jax.vmap(lambda row_V: jax.random.categorical(key, row_V))(filtered_BxV).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled_B, greedy_B)


def _decode_fn(fns: ModelFns, max_new: int, cache_size: int, eos_id: int, vocab_limit: int, stop_at_eos: bool,
               keep_logits: bool = False):
    """(params, prompts BxP right-padded, lengths B, key, temperature, top_k, top_p) ->
    (new tokens BxM, steps, and with `keep_logits` the logits BxMxV each new token was drawn from)."""

    def run(params, prompt_BxP, lengths_B, key, temperature, top_k, top_p):
        B, P = prompt_BxP.shape
        sample = lambda logits_BxV, i: sample_next(logits_BxV, jax.random.fold_in(key, i), temperature, top_k,
                                                   top_p, vocab_limit)
        caches = empty_caches(fns.spec, B, cache_size)
        logits_BxPxV, caches = forward_with_cache(fns, params, prompt_BxP, caches)
        caches = [c.replace(length_B=lengths_B) for c in caches]  # padding slots get overwritten later
        last_BxV = jnp.take_along_axis(logits_BxPxV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
        token_B = sample(last_BxV, 0)
        out_BxM = jnp.full((B, max_new), eos_id, jnp.int32).at[:, 0].set(token_B)
        V = last_BxV.shape[-1] if keep_logits else 0  # a 0-wide buffer when the logits are not kept
        seen_BxMxV = jnp.zeros((B, max_new, V), jnp.float32).at[:, 0].set(last_BxV[:, :V].astype(jnp.float32))
        done_B = (token_B == eos_id) & stop_at_eos

        def more(state):
            i, *_, done_B = state
            return (i < max_new) & ~jnp.all(done_B)

        def step(state):
            i, out_BxM, seen_BxMxV, caches, token_B, done_B = state
            logits_Bx1xV, caches = forward_with_cache(fns, params, token_B[:, None], caches)
            token_B = jnp.where(done_B, eos_id, sample(logits_Bx1xV[:, 0], i))
            out_BxM = jax.lax.dynamic_update_slice_in_dim(out_BxM, token_B[:, None], i, axis=1)
            seen_BxMxV = jax.lax.dynamic_update_slice_in_dim(
                seen_BxMxV, logits_Bx1xV[:, :, :V].astype(jnp.float32), i, axis=1)
            return i + 1, out_BxM, seen_BxMxV, caches, token_B, done_B | ((token_B == eos_id) & stop_at_eos)

        state = (jnp.int32(1), out_BxM, seen_BxMxV, caches, token_B, done_B)
        steps, out_BxM, seen_BxMxV, *_ = jax.lax.while_loop(more, step, state)
        return (out_BxM, steps, seen_BxMxV) if keep_logits else (out_BxM, steps)

    return jax.jit(run)


_COMPILED: dict = {}  # (model spec, max new tokens, ids, eos flag, logits flag, prompt block shape) -> compiled


@dataclass
class Generation:
    tokens: list[np.ndarray]  # per prompt: the new tokens, up to and including end-of-document
    seconds: float  # decoding, compilation excluded
    compile_seconds: float  # 0 when an identical call had compiled it already
    logits: list[np.ndarray] | None = None  # with keep_logits: per prompt, the logits (M_b x V) of each new token

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def check_fits(prompt_lengths: list[int], max_new_tokens: int, context: int, prefix: int = 0) -> None:
    """Refuse, saying what would fit, prompts that with the new tokens exceed the model's context.

    `prefix` tokens (the start-of-document token) were added to each prompt by the caller.
    """
    longest = max(prompt_lengths)
    which = f"prompt {prompt_lengths.index(longest) + 1}" if len(prompt_lengths) > 1 else "the prompt"
    size = f"{longest - prefix} tokens" + (f" (+{prefix} start-of-document)" if prefix else "")
    if longest >= context:
        raise ValueError(f"{which} is {size}, too long for the model's context of {context} tokens "
                         f"(data.seq_len of the run): at most {context - 1 - prefix} prompt tokens fit, "
                         f"leaving room for one new token")
    if longest + max_new_tokens > context:
        raise ValueError(f"{which} ({size}) + --max-new-tokens={max_new_tokens} exceeds the model's context of "
                         f"{context} tokens (data.seq_len of the run): at most {context - longest} new tokens "
                         f"fit after it")


def generate_tokens(fns: ModelFns, params: dict, prompts: list, *, max_new_tokens: int, eos_id: int,
                    vocab_limit: int, sampling: Sampling = Sampling(), seed: int = 0, context: int | None = None,
                    stop_at_eos: bool = True, prefix: int = 0, keep_logits: bool = False) -> Generation:
    """New token ids for each prompt (lists of ids, each non-empty), decoded together in one batch.

    With `context`, prompt + max_new_tokens must fit it; `prefix` (for the message only) is how many
    tokens the caller put in front of every prompt. `keep_logits` also returns the logits each new
    token was drawn from (the tests hold them against the model's full forward pass).
    """
    sampling.check()
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be positive; got {max_new_tokens}")
    lengths = [len(p) for p in prompts]
    if not prompts or min(lengths) == 0:
        raise ValueError("every prompt needs at least one token")
    if context is not None:
        check_fits(lengths, max_new_tokens, context, prefix)
    P = max(lengths)
    prompt_BxP = np.full((len(prompts), P), eos_id, np.int32)
    for row, ids in enumerate(prompts):
        prompt_BxP[row, : len(ids)] = ids
    lengths_B = np.asarray(lengths, np.int32)
    args = (params, prompt_BxP, lengths_B, jax.random.key(seed), *sampling.as_arrays())
    started = time.perf_counter()
    cache_key = (fns.spec, max_new_tokens, eos_id, vocab_limit, stop_at_eos, keep_logits, prompt_BxP.shape)
    compiled = _COMPILED.get(cache_key)
    if compiled is None:
        fn = _decode_fn(fns, max_new_tokens, P + max_new_tokens, eos_id, vocab_limit, stop_at_eos, keep_logits)
        if len(_COMPILED) >= 16:
            _COMPILED.clear()
        compiled = _COMPILED[cache_key] = fn.lower(*args).compile()
    compiled_at = time.perf_counter()
    out_BxM, _, *seen = jax.block_until_ready(compiled(*args))
    finished = time.perf_counter()
    tokens = [_until_eos(row, eos_id) if stop_at_eos else row for row in np.asarray(out_BxM)]
    logits = [np.asarray(seen[0][b, : len(t)]) for b, t in enumerate(tokens)] if keep_logits else None
    return Generation(tokens, seconds=finished - compiled_at, compile_seconds=compiled_at - started, logits=logits)


def _until_eos(row: np.ndarray, eos_id: int) -> np.ndarray:
    hits = np.flatnonzero(row == eos_id)
    return row[: hits[0] + 1] if len(hits) else row


@dataclass
class Completion:
    prompt: str
    text: str
    tokens: list[int]
    stopped: str  # eos | stop | length


def truncate_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def complete(model, prompts: list[str], *, max_new_tokens: int | None = None, sampling: Sampling = Sampling(),
             seed: int = 0, stops: list[str] = (), max_default: int = 256) -> tuple[list[Completion], Generation]:
    """Text completions of `prompts` with a loaded model (see evaluate.load_model).

    `max_new_tokens=None` fills the context after the longest prompt (at most `max_default`).
    """
    fns, params, tokenizer, config = model
    context = int(config.data.seq_len)
    prompt_ids = [np.concatenate([[tokenizer.eos_id], tokenizer.encode(p)]).astype(np.int32) for p in prompts]
    if max_new_tokens is None:
        check_fits([len(p) for p in prompt_ids], 1, context, prefix=1)
        max_new_tokens = min(max_default, context - max(len(p) for p in prompt_ids))
    result = generate_tokens(fns, params, prompt_ids, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                             vocab_limit=tokenizer.vocab_size, sampling=sampling, seed=seed, context=context,
                             prefix=1)
    completions = []
    for prompt, ids in zip(prompts, result.tokens, strict=True):
        text, stopped = truncate_at_stop(tokenizer.decode(ids), list(stops))
        ended = "stop" if stopped else ("eos" if len(ids) and ids[-1] == tokenizer.eos_id else "length")
        completions.append(Completion(prompt, text, [int(i) for i in ids], ended))
    return completions, result

