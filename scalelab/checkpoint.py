"""Orbax checkpoints of a run: train state, data iterator state and run metadata, saved together.

Layout: `RUN_DIR/checkpoints/<step>/{state,data,meta}`. Saves are asynchronous (training goes on
while the previous save is written; Orbax writes into a temporary directory and renames it when
complete, so a kill mid-save leaves no half checkpoint under a step name) and the newest
`checkpoint.keep` are kept; an older checkpoint is deleted only after a newer one is complete.
Restoring takes the target shardings, so a checkpoint written on one mesh loads onto any other.
A newest checkpoint that fails to restore is moved to `checkpoints_damaged/` with a warning, and
the next older one is tried.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("scalelab")

CHECKPOINTS = "checkpoints"
DAMAGED = "checkpoints_damaged"


class CheckpointError(RuntimeError):
    pass


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


def resolve_checkpoint(path) -> Path:
    """A run dir (its newest checkpoint), a `checkpoints/` dir, or one `<step>/` dir -> the step dir."""
    path = Path(path).resolve()
    if (path / "state").is_dir():
        return path
    candidates = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    steps = sorted((int(p.name), p) for p in candidates.iterdir() if p.name.isdigit() and (p / "state").is_dir()) \
        if candidates.is_dir() else []
    if not steps:
        raise CheckpointError(f"no checkpoint found at {path} (expected a run dir, its checkpoints/ or a step dir)")
    return steps[-1][1]


def load_params(path, abstract_params, shardings, allow_missing: bool = False):
    """Only the parameters of a checkpoint, placed with `shardings` (any mesh).

    Refuses, naming every difference, a checkpoint whose parameter tree or shapes differ.
    """
    step_dir = resolve_checkpoint(path)
    checkpointer = ocp.PyTreeCheckpointer()
    stored = checkpointer.metadata(step_dir / "state")
    stored = getattr(stored, "item_metadata", stored)
    stored_params = stored.tree["params"] if hasattr(stored, "tree") else stored["params"]
    ours = {jax.tree_util.keystr(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    theirs = {jax.tree_util.keystr(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(stored_params)}
    problems = [f"{k}: checkpoint {theirs.get(k)} vs config {ours.get(k)}"
                for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(f"init_from={path}: the checkpoint's architecture does not match the config ({shown})")
    target = {"params": _target(abstract_params, shardings)}
    restored = checkpointer.restore(
        step_dir / "state",
        args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        ),
    )
    n = sum(math.prod(a.shape) for a in jax.tree.leaves(restored["params"]))
    log.info("initialised %d parameters from %s", n, step_dir)
    return restored["params"]
