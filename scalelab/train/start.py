"""Where a run starts: its own newest checkpoint (resume), a WSD stable run's checkpoint at this
run's decay start (fork), a pretrained checkpoint's parameters (fine-tune), or fresh weights."""

from __future__ import annotations

import logging

import jax

from scalelab import paths
from scalelab.interop.hf import directory as hf_directory
from scalelab.train.build import Run
from scalelab.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    NoCheckpoint,
    find_checkpoint,
    load_params,
)
from scalelab.train.store import checkpoint_names

log = logging.getLogger("scalelab")


def initial_state(run: Run, ckpt: Checkpointer, at_most: int | None = None):
    """(state, data iterator state or None, step) of the run's first step: its newest checkpoint
    (at step `at_most` or before, when given), else its start."""
    steps, t = run.steps, run.train
    abstract = jax.eval_shape(steps.init_state, t.seed)
    restored = ckpt.restore_latest(abstract, steps.state_shardings, at_most)
    if restored is not None:
        state, data_state, meta = restored
        return state, data_state, int(meta["step"])
    if run.origin.fork_from:
        return fork(run, abstract)
    state = steps.init_state(t.seed)
    if hf_directory.hf_dir(run.origin.init_from) is not None:
        try:
            state["params"] = hf_directory.init_params(run.origin.init_from, abstract["params"],
                                                       steps.state_shardings["params"], run.store.tokenizer)
        except hf_directory.HFError as exc:
            raise CheckpointError(str(exc)) from exc
    elif run.origin.init_from:
        try:
            check_tokenizer(run, run.origin.init_from)
        except NoCheckpoint as exc:
            raise CheckpointError(f"init_from={run.origin.init_from}: {exc}") from exc
        state["params"] = load_params(run.origin.init_from, abstract["params"], steps.state_shardings["params"])
    return state, None, 0


def fork_step(run: Run) -> int:
    """The step at which this WSD run's decay begins: where it forks from the stable run."""
    return int(run.hyper.schedule.decay_start)


def fork(run: Run, abstract):
    """The stable run's full state (parameters, optimizer, data position) at this run's decay start."""
    step = fork_step(run)
    source = Checkpointer.reader(fork_source(run.origin.fork_from, step))
    try:
        if step not in source.steps():
            raise CheckpointError(
                f"fork_from={run.origin.fork_from} has no checkpoint at step {step} (this run's decay start); "
                f"it has {source.steps()}: run the stable phase with checkpoint.steps=[{step}, ...]"
            )
        state, data_state, _ = source.restore_step(step, abstract, run.steps.state_shardings)
    finally:
        source.close()
    log.info("forked from %s at step %d", run.origin.fork_from, step)
    return state, data_state, step


def fork_source(fork_from: str, step: int):
    """The stable run's directory; at a URL, a download of its checkpoint at `step` only."""
    if not paths.is_url(fork_from):
        return fork_from
    wanted = checkpoint_names(step)
    return paths.fetch(fork_from, lambda name: name.startswith(wanted), paths.DOWNLOADS)


def check_tokenizer(run: Run, init_from: str) -> None:
    """Refuse a pretrained checkpoint whose tokenizer differs from this run's data."""
    theirs = find_checkpoint(init_from).meta.get("tokenizer")
    ours = run.store.tokenizer.to_dict()
    if theirs is not None and theirs != ours:
        raise CheckpointError(
            f"init_from={init_from}: the checkpoint was trained with tokenizer "
            f"{theirs.get('kind')} (vocab {theirs.get('vocab_size')}), but this run's data uses "
            f"{ours.get('kind')} (vocab {ours.get('vocab_size')})"
        )
