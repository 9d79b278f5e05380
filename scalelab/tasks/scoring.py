"""Scoring multiple-choice items and continuations with a model: the one computation behind the
built-in tasks in the training loop, `scalelab eval --tasks` and the lm-evaluation-harness adapter.

A (context, continuation) pair is encoded as the harness's own models do: the context, then the
tokens the whole string has beyond the context's (an empty context starts from the end-of-text
id), truncated on the left to the model's window. Every row of a call is right-padded to the
longest (one compilation; lengths are rounded up to a power of two unless the window cuts them) and
scored by `model.loss.continuation_logprobs`.

Shapes: B rows, T tokens.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from scalelab.model.functional import ModelFns
from scalelab.model.loss import continuation_logprobs
from scalelab.model.transformer import ModelSpec

BATCH = 128  # rows per jitted call


@functools.lru_cache(maxsize=8)
def _scorer(spec: ModelSpec):
    return jax.jit(functools.partial(continuation_logprobs, ModelFns(spec)))


def encode_pair(tokenizer, context: str, continuation: str, window: int) -> tuple[np.ndarray, int]:
    """(token ids of context + continuation, at most window + 1 of them; continuation tokens at the end)."""
    whole = [int(t) for t in tokenizer.encode(context + continuation)]
    head = [int(t) for t in tokenizer.encode(context)] if context else []
    if whole[:len(head)] != head:  # a merge across the boundary: score the continuation alone
        whole = head + [int(t) for t in tokenizer.encode(continuation)]
    tail = whole[len(head):]
    ids = ([tokenizer.eos_id] + head if not head else head) + tail
    ids = ids[-(window + 1):]
    return np.asarray(ids, np.int32), min(len(tail), len(ids) - 1)


def window_of(rows) -> int:
    """The longest row: rows cut to a model's window are padded to it, not to the next power of two."""
    return max(len(ids) for ids, _ in rows)


def score_rows(fns: ModelFns, params, rows: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(log-probability of each row's last n tokens given the rest, whether they are all greedy)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    logprob, greedy = np.zeros(len(rows)), np.zeros(len(rows), bool)
    score = _scorer(fns.spec)
    longest = window_of(rows)
    width = min(2 ** math.ceil(math.log2(longest)), max(longest, 16))  # one program for every call
    for start in range(0, len(order), BATCH):
        chunk = order[start:start + BATCH]
        windows_BxT1 = np.zeros((BATCH, width), np.int32)
        mask_BxT = np.zeros((BATCH, width - 1), bool)
        for r, i in enumerate(chunk):
            ids, n = rows[i]
            windows_BxT1[r, :len(ids)] = ids
            mask_BxT[r, len(ids) - 1 - n:len(ids) - 1] = True
        lp_B, greedy_B = jax.device_get(score(params, windows_BxT1, mask_BxT))
        logprob[chunk], greedy[chunk] = lp_B[:len(chunk)], greedy_B[:len(chunk)]
    return logprob, greedy


def score_choices(fns: ModelFns, params, tokenizer, items, window: int) -> dict:
    """Accuracy (argmax of the log-likelihood), length-normalised accuracy (per byte of the choice,
    the harness's acc_norm) and the right choice's bits per byte over multiple-choice `items`
    ({context, choices, answer})."""
    rows, spans = [], []
    for it in items:
        spans.append((len(rows), len(it["choices"])))
        rows += [encode_pair(tokenizer, it["context"], c, window) for c in it["choices"]]
    logprob, _ = score_rows(fns, params, rows)
    right = right_norm = bits = n_bytes = 0.0
    for it, (start, k) in zip(items, spans, strict=True):
        lp = logprob[start:start + k]
        sizes = np.array([len(c.encode()) for c in it["choices"]], float)
        right += int(np.argmax(lp)) == it["answer"]
        right_norm += int(np.argmax(lp / sizes)) == it["answer"]
        bits += -lp[it["answer"]] / math.log(2)
        n_bytes += sizes[it["answer"]]
    n = max(len(items), 1)
    return {"acc": right / n, "acc_norm": right_norm / n, "bpb": bits / max(n_bytes, 1.0), "items": len(items)}
