"""Orbax checkpoints of a run: train state, data iterator state and run metadata, saved together.

Layout: `RUN_DIR/checkpoints/<step>/{state,data,meta}`. Saves are asynchronous (training goes on
while the previous save is written) and the newest `checkpoint.keep` are kept. Restoring takes
the target shardings, so a checkpoint written on one mesh loads onto any other.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir).resolve() / CHECKPOINTS


class Checkpointer:
    def __init__(self, run_dir, keep: int = 2, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        )
        self.manager = ocp.CheckpointManager(checkpoint_dir(run_dir), options=options,
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

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, step: int, abstract_state, shardings):
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
