"""Task scores for finished runs, without training them again.

`train.eval_tasks` is part of a run's config, so adding tasks to a finished study in its config
would train every run again. Instead `scalelab eval RUN_OR_SWEEP --tasks NAMES --record` scores each
completed run's final checkpoint with the training loop's own computation (`tasks.suite`) and keeps
the scores in the run's `tasks.json`:

    {"step": S, "tasks": {NAME: {"limit": L, "include": [DIR, ...], "scores": {"task/NAME/acc": ...}}}}

`collect` adds them to the run's row beside its summary (scores the loop wrote in summary.json come
first), so that the report's task section and `analyze tasks` read them as in-loop scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from scalelab.infer.load import load_checkpoint
from scalelab.runfiles import TASKS
from scalelab.tasks import builtin
from scalelab.tasks.suite import score_tasks
from scalelab.train.checkpoint import NoCheckpoint, find_checkpoint
from scalelab.train.runlog import read_summary, write_json_atomic


def read_recorded(run_dir) -> dict:
    path = Path(run_dir) / TASKS
    return json.loads(path.read_text()) if path.is_file() else {}


def _known(summary: dict, recorded: dict, name: str, limit, include: list[str], step: int) -> bool:
    """Whether the run already has `name`'s scores for this step, limit and include: from its loop
    (built-in tasks, scored whole) or from an earlier record."""
    if name in builtin.TASKS and f"task/{name}/acc" in summary:
        return True
    entry = recorded.get("tasks", {}).get(name) if recorded.get("step") == step else None
    return bool(entry) and entry["limit"] == limit and entry["include"] == include


class Recorded(NamedTuple):
    what: str  # what was done, in words
    scores: dict  # the scores added
    problem: bool = False  # a completed run that could not be scored (no final checkpoint)


def record_tasks(run_dir, names, limit: int | None = None, include=()) -> Recorded:
    """Score a completed run's final checkpoint on the tasks `names` it has no scores for yet and
    add them to its tasks.json. Runs that did not complete are skipped."""
    run_dir, include = Path(run_dir), [str(d) for d in include]
    summary = read_summary(run_dir) or {}
    if summary.get("status") != "completed":
        return Recorded(f"skipped ({summary.get('status', 'no summary.json')}: only completed runs are scored)", {})
    try:
        files = find_checkpoint(run_dir)
    except NoCheckpoint:
        return Recorded("not scored: it has no checkpoint", {}, problem=True)
    if files.step != summary.get("steps"):
        return Recorded(f"not scored: its newest checkpoint is step {files.step}, the run ended at step "
                        f"{summary.get('steps')}", {}, problem=True)
    recorded = read_recorded(run_dir)
    todo = [n for n in builtin.expand(list(names)) if not _known(summary, recorded, n, limit, include, files.step)]
    if not todo:
        return Recorded("already scored", {})
    model = load_checkpoint(files)
    tasks = {} if recorded.get("step") != files.step else dict(recorded.get("tasks", {}))
    added = {}
    for name in todo:
        scores = score_tasks(model.fns, model.params, model.tokenizer, int(model.config.data.seq_len), [name],
                             limit, include)
        tasks[name] = {"limit": limit, "include": include, "scores": scores}
        added |= scores
    write_json_atomic(run_dir / TASKS, {"step": files.step, "tasks": tasks})
    return Recorded(f"scored {', '.join(todo)} at step {files.step}", added)
