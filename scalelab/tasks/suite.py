"""A list of tasks scored with a model's parameters: the built-in ones directly, the others through
the lm-evaluation-harness. The one computation behind `train.eval_tasks` in the training loop and
`scalelab eval --tasks NAMES --record` on finished runs, so that both give the same numbers."""

from __future__ import annotations

from scalelab.tasks import builtin, scoring

METRICS = ("acc", "acc_norm", "bpb", "items")


def score_tasks(fns, params, tokenizer, seq_len: int, names, limit: int | None = None, include=(),
                beat=None) -> dict:
    """Per task `task/NAME/acc`, `.../acc_norm`, `.../bpb` (the right choice's bits per byte) and
    `.../items`; the group `stdlib` stands for its tasks. `limit` caps the items of harness tasks
    (built-in tasks are always scored whole); `beat()` after each task and each block of a harness
    task's rows (a training loop's watchdog)."""
    names = builtin.expand(list(names))
    out = {}
    for name in (n for n in names if n in builtin.TASKS):
        result = scoring.score_choices(fns, params, tokenizer, builtin.task_items(name), seq_len)
        out |= {f"task/{name}/{k}": float(result[k]) for k in METRICS}
        if beat is not None:
            beat()
    others = [n for n in names if n not in builtin.TASKS]
    if others:
        from scalelab.tasks import harness

        model = harness.TaskModel(fns, params, tokenizer, seq_len, progress=beat)
        for name in others:  # one at a time, so that a watchdog hears from each
            scores = harness.task_scores(model, [name], limit, include)
            out |= {f"task/{task}/{k}": float(v) for task, row in scores.items() for k, v in row.items()}
            if beat is not None:
                beat()
    return out
