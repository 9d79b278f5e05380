"""The built-in tasks as lm-evaluation-harness task files: one JSONL of items and one task YAML a
task (multiple choice over the item's `choices`, the continuation right after the context: no
delimiter), and the group `stdlib`. Written under `$SCALELAB_CACHE/tasks/py<version>/` and handed
to the harness's TaskManager as an include path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scalelab.tasks import builtin

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
  description: {description}
  items_sha256: {digest}
"""

GROUP_YAML = """group: {group}
task:
{tasks}
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
metadata:
  version: 1
"""


def tasks_dir() -> Path:
    from scalelab.data.stdlib import cache_dir

    return cache_dir() / "tasks" / f"py{'.'.join(map(str, sys.version_info[:3]))}"


def write_builtin_tasks(directory: Path | None = None) -> Path:
    """Write (or refresh) the built-in tasks' files; the directory."""
    directory = Path(directory or tasks_dir())
    directory.mkdir(parents=True, exist_ok=True)
    for name, (description, _) in builtin.TASKS.items():
        data = directory / f"{name}.jsonl"
        lines = "".join(json.dumps(it) + "\n" for it in builtin.task_items(name))
        if not data.exists() or data.read_text() != lines:
            data.write_text(lines)
        (directory / f"{name}.yaml").write_text(TASK_YAML.format(
            name=name, data=json.dumps(str(data)), description=json.dumps(description),
            digest=builtin.items_hash(name)))
    (directory / f"{builtin.GROUP}.yaml").write_text(GROUP_YAML.format(
        group=builtin.GROUP, tasks="\n".join(f"  - {name}" for name in builtin.TASKS)))
    return directory
