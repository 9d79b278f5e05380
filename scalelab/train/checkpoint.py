"""Orbax checkpoints of a run: train state, data iterator state and run metadata, saved together.

This module is the one that knows the layout: `RUN_DIR/checkpoints/<step>/{state,data,meta}`
(finding a run's checkpoint, restoring the whole state, restoring only the parameters, reading the
metadata). Saves are asynchronous (training goes on
while the previous save is written; Orbax writes into a temporary directory and renames it when
complete, so a kill mid-save leaves no half checkpoint under a step name) and the newest
`checkpoint.keep` are kept; an older checkpoint is deleted only after a newer one is complete.
Restoring takes the target shardings, so a checkpoint written on one mesh loads onto any other.
A newest checkpoint that fails to restore is moved to `checkpoints_damaged/` with a warning, and
the next older one is tried.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("scalelab")

from scalelab.runfiles import CHECKPOINTS, DAMAGED, SUMMARY


class CheckpointError(RuntimeError):
    pass


class NoCheckpoint(CheckpointError, FileNotFoundError):
    """The path names no checkpoint (neither a run with checkpoints nor a step directory)."""


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir).resolve() / CHECKPOINTS


def _target(abstract_tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


class Checkpointer:
    def __init__(self, run_dir, keep: int = 2, async_save: bool = True):
        self.run_dir = Path(run_dir).resolve()
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True,
        )
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(checkpoint_dir(self.run_dir), options=self._options,
                                     item_names=("state", "data", "meta"))

    def save(self, step: int, state, data_state: dict, meta: dict, force: bool = False) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_step(self, step: int, abstract_state, shardings):
        """(state, data_state, meta) of the checkpoint at `step`, placed with `shardings`."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_target(abstract_state, shardings)),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"], restored["meta"]

    def restore_latest(self, abstract_state, shardings):
        """(state, data_state, meta) of the newest checkpoint that restores, or None if there is none."""
        for step in reversed(self.steps()):
            try:
                return self.restore_step(step, abstract_state, shardings)
            except Exception as exc:  # noqa: BLE001 - any failure means this checkpoint is unusable
                self._set_aside(step, exc)
        return None

    def _set_aside(self, step: int, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        damaged = self.run_dir / DAMAGED / f"{step}-{int(time.time())}"
        damaged.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(checkpoint_dir(self.run_dir) / str(step)), damaged)
        log.warning("checkpoint at step %d is damaged (%s); moved it to %s and trying an older one",
                    step, reason, damaged)
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


@dataclass
class CheckpointFiles:
    """Where one checkpoint and the run around it live."""

    step_dir: Path
    step: int
    run_dir: Path | None  # None when the step dir is not inside a run's checkpoints/
    meta: dict  # the checkpoint's own metadata (step, tokenizer, config), {} if absent
    summary: dict  # the run's summary.json, {} if absent


def _newest_step_dir(path: Path) -> Path:
    if (path / "state").is_dir():
        return path
    parent = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    steps = sorted((int(p.name), p) for p in parent.iterdir() if p.name.isdigit() and (p / "state").is_dir()) \
        if parent.is_dir() else []
    if not steps:
        raise NoCheckpoint(f"{path}: no checkpoint found (expected a run dir with checkpoints/<step>/, "
                              f"or a checkpoint step dir holding state/)")
    return steps[-1][1]


def read_meta(step_dir) -> dict:
    """A checkpoint's metadata (step, model, tokenizer, config), or {} for a checkpoint without it."""
    meta_file = Path(step_dir) / "meta" / "metadata"
    return json.loads(meta_file.read_text()) if meta_file.exists() else {}


def find_checkpoint(path) -> CheckpointFiles:
    """A run dir (its newest checkpoint), its `checkpoints/` dir, or one `checkpoints/<step>/` dir."""
    path = Path(path)
    if not path.exists():
        raise NoCheckpoint(f"no such run or checkpoint: {path}")
    step_dir = _newest_step_dir(path.resolve())
    run_dir = step_dir.parent.parent if step_dir.parent.name == CHECKPOINTS else None
    meta = read_meta(step_dir)
    summary_file = run_dir / SUMMARY if run_dir else None
    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.exists() else {}
    step = int(meta.get("step", step_dir.name if step_dir.name.isdigit() else -1))
    return CheckpointFiles(step_dir=step_dir, step=step, run_dir=run_dir, meta=meta, summary=summary)


def resolve_checkpoint(path) -> Path:
    """A run dir, its `checkpoints/` dir or one `<step>/` dir -> that checkpoint's step dir."""
    return find_checkpoint(path).step_dir


def _check_param_shapes(step_dir: Path, abstract_params, source: str) -> None:
    stored = ocp.PyTreeCheckpointer().metadata(step_dir / "state")
    stored = getattr(stored, "item_metadata", stored)
    stored_params = stored.tree["params"] if hasattr(stored, "tree") else stored["params"]
    ours = {jax.tree_util.keystr(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    theirs = {jax.tree_util.keystr(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(stored_params)}
    problems = [f"{k}: checkpoint {theirs.get(k)} vs config {ours.get(k)}"
                for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(f"{source}: the checkpoint's architecture does not match the config ({shown})")


def restore_params(path, abstract_params, shardings=None, source: str = "init_from"):
    """Only the parameters of a checkpoint, placed with `shardings` (any mesh; None: the first device).

    Refuses, naming every difference (and `source`, the key or argument that named the checkpoint),
    a checkpoint whose parameter tree or shapes differ.
    """
    step_dir = resolve_checkpoint(path)
    _check_param_shapes(step_dir, abstract_params, f"{source}={path}")
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract_params)
    target = {"params": _target(abstract_params, shardings)}
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / "state",
        args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        ),
    )
    n = sum(math.prod(a.shape) for a in jax.tree.leaves(restored["params"]))
    log.info("restored %d parameters from %s", n, step_dir)
    return restored["params"]


def load_params(path, abstract_params, shardings):
    """`init_from`: the parameters of a checkpoint, for fine-tuning (see restore_params)."""
    return restore_params(path, abstract_params, shardings, source="init_from")
