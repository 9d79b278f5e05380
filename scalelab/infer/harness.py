"""The lm-evaluation-harness through a scalelab model (`scalelab eval RUN --tasks NAMES`): an
implementation of the harness's language-model interface (`lm_eval.api.model.LM`) over a loaded
run or `hf:` directory, and the call that runs harness tasks with it, the built-in `stdlib` tasks
included. Needs the `tasks` extra (`pip install 'scalelab[tasks]'`).

Log-likelihoods come from `scalelab.tasks.scoring`, the same computation the training loop's task
evaluation uses; rolling log-likelihoods score a string in windows of the model's context, each
token predicted once with as much context as fits; generation is greedy with the KV cache.
"""

from __future__ import annotations

import os

import numpy as np
from lm_eval.api.model import LM

from scalelab.infer.generate import generate_tokens, truncate_at_stop
from scalelab.infer.load import LoadedModel
from scalelab.tasks import scoring


class ScalelabLM(LM):
    """A scalelab model as the harness's LM."""

    def __init__(self, model: LoadedModel, max_gen_toks: int = 256):
        super().__init__()
        self.model, self.max_gen_toks = model, max_gen_toks
        self.window = int(model.config.data.seq_len)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        m = self.model
        rows = [scoring.encode_pair(m.tokenizer, context, continuation, self.window)
                for context, continuation in (r.args for r in requests)]
        logprob, greedy = scoring.score_rows(m.fns, m.params, rows)
        return [(float(lp), bool(g)) for lp, g in zip(logprob, greedy, strict=True)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        m, out = self.model, []
        for (text,) in (r.args for r in requests):
            ids = np.concatenate([[m.tokenizer.eos_id], m.tokenizer.encode(text)]).astype(np.int32)
            rows = []
            for start in range(1, len(ids), self.window):  # predict ids[start:end], each token once
                end = min(start + self.window, len(ids))
                rows.append((ids[max(0, end - self.window - 1):end], end - start))
            out.append(float(scoring.score_rows(m.fns, m.params, rows)[0].sum()) if rows else 0.0)
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
        return out


def task_manager(include: list[str] = ()):
    """The harness's TaskManager with the built-in tasks and the task directories in `include`."""
    from lm_eval.tasks import TaskManager

    from scalelab.tasks.harness_files import write_builtin_tasks

    return TaskManager(include_path=[str(write_builtin_tasks()), *map(str, include)])


def run_tasks(model: LoadedModel, tasks: list[str], limit: int | float | None = None, include: list[str] = (),
              bootstrap_iters: int = 1000) -> dict:
    """Run harness tasks on `model`: the harness's `results` dict (per task: its metrics and their
    standard errors). Offline: datasets are read from local files (HF_DATASETS_OFFLINE)."""
    import lm_eval

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = lm_eval.simple_evaluate(model=ScalelabLM(model), tasks=list(tasks), limit=limit,
                                  task_manager=task_manager(include), bootstrap_iters=bootstrap_iters,
                                  log_samples=False, verbosity="WARNING")
    return out["results"]


def list_tasks(include: list[str] = ()) -> list[str]:
    """The task and group names the harness knows, the built-in ones and `include`'s among them."""
    return sorted(task_manager(include).all_tasks)
