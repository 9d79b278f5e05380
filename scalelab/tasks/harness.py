"""The lm-evaluation-harness through a scalelab model: an implementation of the harness's
language-model interface (`lm_eval.api.model.LM`) over a model's functions and parameters, the call
that runs harness tasks with it (`scalelab eval RUN --tasks NAMES`), and the per-task scores the
training loop records for harness tasks named in `train.eval_tasks`. Needs the `tasks` extra
(`pip install 'scalelab[tasks]'`).

Log-likelihoods come from `scalelab.tasks.scoring`, the same computation the built-in tasks use;
rolling log-likelihoods score a string in windows of the model's context, each token predicted once
with as much context as fits; generation is greedy with the KV cache.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import numpy as np
from lm_eval.api.model import LM

from scalelab.infer.generate import generate_tokens, truncate_at_stop
from scalelab.tasks import scoring


class TaskModel(NamedTuple):
    """What the harness needs of a model: its functions, parameters, tokenizer and context length."""

    fns: object  # scalelab.model.functional.ModelFns
    params: dict
    tokenizer: object
    window: int
    progress: object = None  # called after each block of scored rows (a training loop's watchdog beat)


ROWS_PER_PROGRESS = 1024  # rows scored between two progress calls


class ScalelabLM(LM):
    """A scalelab model as the harness's LM."""

    def __init__(self, model: TaskModel, max_gen_toks: int = 256):
        super().__init__()
        self.model, self.max_gen_toks, self.window = model, max_gen_toks, int(model.window)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        m = self.model
        rows = [scoring.encode_pair(m.tokenizer, context, continuation, self.window)
                for context, continuation in (r.args for r in requests)]
        out = []
        for start in range(0, len(rows), ROWS_PER_PROGRESS):
            logprob, greedy = scoring.score_rows(m.fns, m.params, rows[start:start + ROWS_PER_PROGRESS])
            out += [(float(lp), bool(g)) for lp, g in zip(logprob, greedy, strict=True)]
            if m.progress is not None:
                m.progress()
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        m, out = self.model, []
        for (text,) in (r.args for r in requests):
            ids = np.concatenate([[m.tokenizer.eos_id], m.tokenizer.encode(text)]).astype(np.int32)
            rows = []
            for start in range(1, len(ids), self.window):  # predict ids[start:end], each token once
                end = min(start + self.window, len(ids))
                rows.append((ids[max(0, end - self.window - 1):end], end - start))
            out.append(float(scoring.score_rows(m.fns, m.params, rows)[0].sum()) if rows else 0.0)
            if m.progress is not None:
                m.progress()
        return out

    def generate_until(self, requests) -> list[str]:
        m, out = self.model, []
        for context, gen_kwargs in (r.args for r in requests):
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.window - 1)
            ids = np.concatenate([[m.tokenizer.eos_id], m.tokenizer.encode(context)]).astype(np.int32)
            ids = ids[-(self.window - max_new):]
            result = generate_tokens(m.fns, m.params, [ids], max_new_tokens=max_new, eos_id=m.tokenizer.eos_id,
                                     vocab_limit=m.tokenizer.vocab_size, context=self.window)
            out.append(truncate_at_stop(m.tokenizer.decode(result.tokens[0]), until)[0])
            if m.progress is not None:
                m.progress()
        return out


def task_manager(include=()):
    """The harness's TaskManager with the built-in tasks and the task directories in `include`
    (one per process and `include`: indexing the harness's tasks takes seconds, and a training
    loop asks at every evaluation)."""
    return _task_manager(tuple(map(str, include)))


@functools.lru_cache(maxsize=8)
def _task_manager(include: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    from scalelab.tasks.harness_files import write_builtin_tasks

    return TaskManager(include_path=[str(write_builtin_tasks()), *include])


def evaluate(model: TaskModel, tasks: list[str], limit: int | float | None = None, include=(),
             bootstrap_iters: int = 1000, log_samples: bool = False) -> dict:
    """The harness's whole output for `tasks` on `model`. Datasets are read offline (from local
    files and the Hugging Face cache) unless HF_DATASETS_OFFLINE is already set: a machine without
    the Hub would otherwise wait on it even for local tasks. HF_DATASETS_OFFLINE=0 allows downloads."""
    import lm_eval

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return lm_eval.simple_evaluate(model=ScalelabLM(model), tasks=list(tasks), limit=limit,
                                   task_manager=task_manager(include), bootstrap_iters=bootstrap_iters,
                                   log_samples=log_samples, verbosity="WARNING")


def run_tasks(model: TaskModel, tasks: list[str], limit: int | float | None = None, include=(),
              bootstrap_iters: int = 1000) -> dict:
    """Run harness tasks on `model`: the harness's `results` dict (per task: its metrics and their
    standard errors)."""
    return evaluate(model, tasks, limit, include, bootstrap_iters)["results"]


def list_tasks(include=()) -> list[str]:
    """The task and group names the harness knows, the built-in ones and `include`'s among them."""
    return sorted(task_manager(include).all_tasks)


def right_choice_bits(sample: dict) -> tuple[float, int] | None:
    """(bits, bytes) of a log-likelihood sample's right continuation (its target), or None when the
    sample is not one (generation, rolling) or its target cannot be placed among its choices."""
    args, resps = sample["arguments"], sample["filtered_resps"]
    if not args or any(len(a) != 2 or not isinstance(r, (tuple, list)) or len(r) != 2 for a, r in zip(args, resps)):
        return None
    target = sample["target"]
    if isinstance(target, list):
        target = target[0] if target else None
    if isinstance(target, str):
        found = [i for i, (_, continuation) in enumerate(args) if continuation.strip() == target.strip()]
        target = found[0] if found else (0 if len(args) == 1 else None)
    if not isinstance(target, (int, np.integer)) or not 0 <= target < len(args):
        return None
    return -float(resps[target][0]) / math.log(2), len(args[target][1].encode())


def task_scores(model: TaskModel, tasks: list[str], limit: int | None = None, include=()) -> dict:
    """Per task the training loop's task metrics: accuracy and length-normalised accuracy where the
    task reports them, the right continuation's bits per byte where its requests are log-likelihoods
    (the two-step chain's x), and the number of items scored."""
    out = evaluate(model, tasks, limit, include, bootstrap_iters=0, log_samples=True)
    scores = {}
    for name, samples in out["samples"].items():
        metrics = out["results"].get(name, {})
        row = {"items": len(samples)}
        for key in ("acc", "acc_norm"):
            if isinstance(metrics.get(f"{key},none"), (int, float)):
                row[key] = float(metrics[f"{key},none"])
        bits = [b for b in map(right_choice_bits, samples) if b is not None]
        if bits and len(bits) == len(samples):
            row["bpb"] = sum(b for b, _ in bits) / max(sum(n for _, n in bits), 1)
        scores[name] = row
    return scores
