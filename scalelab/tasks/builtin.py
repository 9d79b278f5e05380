"""The built-in tasks (`stdlib`): multiple-choice items made deterministically from the validation
files of the built-in corpus (the Python standard library's sources), so that task scaling can be
measured offline. Each item is a context (the file's text before the answer, its last
`CONTEXT_CHARS` characters), four choices and the index of the right one; chance is 25%.

* `stdlib_close`: a line's closing delimiters. Lines ending in a run of two or three of `)]}`
  whose brackets the line itself opens; the choices are that run and three other runs of `)]}`
  of the same length. The easiest: the open brackets are in the context.
* `stdlib_keyword`: the keyword that starts a line. Lines that start (after their indentation)
  with one of KEYWORDS; the choices are that keyword and three others. Middling: the previous
  lines and the indentation say much, not all.
* `stdlib_ident`: the name a function returns. Lines `return NAME` where NAME appears (assigned,
  a parameter, used) within the previous LOOKBACK lines; the choices are NAME and three other
  names seen there. Hard: the model must tell which of the names in view is the result.

Items are taken evenly spread over every candidate of the validation files in path order (at most
ITEMS per task); the distractors come from a generator seeded by the item's file and line. The
same Python (hence the same corpus) gives the same items: `items_hash` checks it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import keyword
import re

import numpy as np

GROUP = "stdlib"
CONTEXT_CHARS = 256
ITEMS = 100  # per task: the quickstart scores 262 items a run, under 10% of its wall time (NOTES.md)
CHOICES = 4
KEYWORDS = ("return", "if", "for", "def", "elif", "else", "while", "import", "raise", "with", "try", "class",
            "pass", "break", "continue", "from", "yield", "assert", "del", "except", "finally")
CLOSERS = ")]}"
OPENER = {")": "(", "]": "[", "}": "{"}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NOT_A_RESULT = frozenset({"self", "cls", *keyword.kwlist, *keyword.softkwlist})
LOOKBACK = 16  # lines before a `return NAME` in which NAME must appear


@functools.lru_cache(maxsize=4)
def validation_texts(val_fraction: float = 0.05) -> tuple[tuple[str, str], ...]:
    """(relative path, text) of the corpus's validation files, in path order."""
    from scalelab.data.stdlib import is_validation, source_files, stdlib_root

    root = stdlib_root()
    out = []
    for f in source_files(root):
        rel = f.relative_to(root).as_posix()
        if is_validation(rel, val_fraction):
            out.append((rel, f.read_bytes().decode("utf-8", errors="replace")))
    return tuple(out)


def _rng(rel: str, line: int, task: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{task}:{rel}:{line}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _item(task: str, rel: str, line: int, context: str, answer: str, others: list[str]) -> dict | None:
    others = sorted(set(others) - {answer})
    if len(others) < CHOICES - 1:
        return None
    rng = _rng(rel, line, task)
    choices = [answer, *[others[i] for i in rng.choice(len(others), CHOICES - 1, replace=False)]]
    order = rng.permutation(CHOICES)
    return {"id": f"{rel}:{line}", "context": context[-CONTEXT_CHARS:], "choices": [choices[i] for i in order],
            "answer": int(np.argmax(order == 0))}


def _balanced_by_line(line: str, run: str) -> bool:
    """Whether the line before `run` leaves exactly `run`'s brackets open, innermost last."""
    stack = []
    for ch in line:
        if ch in "([{":
            stack.append(ch)
        elif ch in CLOSERS:
            if not stack or stack[-1] != OPENER[ch]:
                return False
            stack.pop()
    return "".join(stack) == "".join(OPENER[c] for c in reversed(run))


ALL_RUNS = ["".join(p) for n in (2, 3) for p in itertools.product(CLOSERS, repeat=n)]


def close_candidates(rel: str, text: str):
    offset = 0
    for i, line in enumerate(text.split("\n")):
        body = line.rstrip()
        run = body[len(body.rstrip(CLOSERS)):]
        if 2 <= len(run) <= 3 and not body.lstrip().startswith("#") and _balanced_by_line(body[:-len(run)], run):
            same_length = [r for r in ALL_RUNS if len(r) == len(run)]
            yield _item("stdlib_close", rel, i, text[:offset + len(body) - len(run)], run, same_length)
        offset += len(line) + 1


def keyword_candidates(rel: str, text: str):
    offset = 0
    for i, line in enumerate(text.split("\n")):
        stripped = line.lstrip()
        word = NAME.match(stripped)
        if word and word.group() in KEYWORDS and stripped[len(word.group()):][:1] in (" ", ":", ""):
            start = offset + len(line) - len(stripped)
            yield _item("stdlib_keyword", rel, i, text[:start], word.group(), list(KEYWORDS))
        offset += len(line) + 1


def ident_candidates(rel: str, text: str):
    lines, offset = text.split("\n"), 0
    for i, line in enumerate(lines):
        m = re.fullmatch(r"(\s+return )([A-Za-z_][A-Za-z0-9_]*)\s*", line)
        if m and m.group(2) not in NOT_A_RESULT:
            seen = {n for w in lines[max(0, i - LOOKBACK):i] for n in NAME.findall(w)} - NOT_A_RESULT
            if m.group(2) in seen:
                yield _item("stdlib_ident", rel, i, text[:offset + len(m.group(1))], m.group(2), sorted(seen))
        offset += len(line) + 1


TASKS = {
    "stdlib_close": ("the closing delimiters of a line", close_candidates),
    "stdlib_keyword": ("the keyword that starts a line", keyword_candidates),
    "stdlib_ident": ("the name a function returns, seen a few lines before", ident_candidates),
}


@functools.lru_cache(maxsize=8)
def task_items(task: str, val_fraction: float = 0.05) -> tuple[dict, ...]:
    """The items of one built-in task (at most ITEMS, spread evenly over its candidates)."""
    if task not in TASKS:
        raise KeyError(f"no built-in task {task!r}; the built-in tasks are {', '.join(TASKS)}")
    make = TASKS[task][1]
    candidates = [it for rel, text in validation_texts(val_fraction) for it in make(rel, text) if it is not None]
    if len(candidates) > ITEMS:
        picks = np.linspace(0, len(candidates) - 1, ITEMS).round().astype(int)
        candidates = [candidates[i] for i in picks]
    return tuple(candidates)


def items_hash(task: str, val_fraction: float = 0.05) -> str:
    """sha256 of a task's items as JSON lines: equal on every machine with the same Python."""
    lines = "".join(json.dumps(it, sort_keys=True) + "\n" for it in task_items(task, val_fraction))
    return hashlib.sha256(lines.encode()).hexdigest()


def expand(names) -> list[str]:
    """Task names with the group `stdlib` expanded to its tasks, in order, without repeats."""
    out = []
    for name in names:
        for task in (list(TASKS) if name == GROUP else [name]):
            if task not in out:
                out.append(task)
    return out
