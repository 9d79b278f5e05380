"""A run, built from its config: the data store and plan, the model shape and counts, the mesh
and the jitted steps. Building checks everything a config can get wrong before anything is
compiled, and touches no files beyond reading the data store's manifest."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf

from scalelab import ledger
from scalelab.config import ConfigError, validate
from scalelab.data import pipeline
from scalelab.data.store import TokenStore
from scalelab.lr_law_file import LawFileError, read_law
from scalelab.model.functional import ModelFns, model_fns
from scalelab.model.transformer import ModelSpec
from scalelab.train import mesh as meshlib
from scalelab.train import optim, trackers
from scalelab.train.hf_checkpoint import with_hf_model
from scalelab.train.step import Steps, auto_grad_accum, build_steps, rules_key


@dataclass(frozen=True)
class Cadence:
    """When a run logs, evaluates and saves (plain numbers: read on every step)."""

    total: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    checkpoint_steps: frozenset

    def evaluates(self, step: int) -> bool:
        return bool(self.eval_every and step % self.eval_every == 0) or step == self.total

    def saves(self, step: int) -> bool:
        return bool(self.checkpoint_every and step % self.checkpoint_every == 0) or step in self.checkpoint_steps \
            or step == self.total

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total


@dataclass(eq=False)
class Run:
    """Everything one training run needs, built (and checked) before anything is compiled."""

    cfg: DictConfig
    run_dir: Path
    store: TokenStore
    plan: pipeline.DataPlan
    shape: ledger.Shape
    counts: ledger.Ledger
    mesh: Any
    rules: dict
    hyper: optim.Hyper  # the run's schedule and optimizer numbers: an input of the train step
    fns: ModelFns
    grad_accum: int  # train.grad_accum=0 resolved
    steps: Steps
    config: dict  # the resolved config, as recorded in summary.json and checkpoints
    cadence: Cadence

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def tokens(self) -> int:
        return self.plan.steps * self.plan.tokens_per_step

    def to_global(self, local_batch: np.ndarray) -> jax.Array:
        """This process's rows of a batch -> the global batch array, sharded over the mesh."""
        global_shape = (self.cfg.train.batch_size, *local_batch.shape[1:])
        return jax.make_array_from_process_local_data(self.steps.batch_sharding, local_batch, global_shape)

    def hyper_input(self):
        """The run's `hyper`, placed as the train step expects it."""
        return jax.device_put(self.hyper.as_input(), self.steps.hyper_sharding)

    def bpb(self, loss: float) -> float:
        """Bits per byte of a validation loss in nats per token."""
        return loss / np.log(2) / self.store.bytes_per_token("val")


def with_law_lr(cfg: DictConfig, params: int, tokens: int, batch_tokens: int) -> DictConfig:
    """`cfg` with `optimizer.lr` set by the law file `optimizer.lr_law` (when given) for this run's
    N, D and batch in tokens; a copy, so that the recorded config shows the lr the run used."""
    path = cfg.optimizer.lr_law
    if not path:
        return cfg
    try:
        law = read_law(path)
    except LawFileError as exc:
        raise ConfigError("optimizer.lr_law", str(exc)) from exc
    lr = law.lr(params, tokens, batch_tokens)
    far = law.outside(params, tokens, batch_tokens)
    if far:
        warnings.warn(f"optimizer.lr_law={path} extrapolates: {'; '.join(far)} (lr {lr:.3g})", stacklevel=2)
    cfg = copy.deepcopy(cfg)
    cfg.optimizer.lr = lr
    return cfg


def build_run(cfg: DictConfig, run_dir, devices=None) -> Run:
    """Validate `cfg` and build its run (jax.distributed must already be initialised).

    `devices` (default: all) are the devices the run's mesh is made of."""
    cfg = with_hf_model(cfg)
    validate(cfg)
    trackers.check(cfg.logger)  # a selected tracker's missing package fails here, before compilation
    t = cfg.train
    store = pipeline.open_store(cfg.data)
    plan = pipeline.plan(store, cfg.data, t.batch_size)
    vocab = store.tokenizer.vocab_size
    spec = ModelSpec.from_config(cfg, vocab)
    mesh = meshlib.make_mesh(cfg.mesh, devices)
    rules = OmegaConf.to_container(cfg.mesh.rules)
    counts = ledger.Ledger.of(spec.shape)
    cfg = with_law_lr(cfg, counts.params, plan.steps * plan.tokens_per_step, t.batch_size * cfg.data.seq_len)
    hyper = optim.hyper_of(cfg.optimizer, cfg.schedule, plan.steps)
    fns = model_fns(spec)
    grad_accum = t.grad_accum or auto_grad_accum(
        t.batch_size, cfg.data.seq_len, meshlib.batch_shards(rules, mesh, t.batch_size), jax.default_backend())
    steps = build_steps(fns, mesh, rules_key(rules), t.batch_size, grad_accum, impl=cfg.mesh.impl,
                        optimizer=cfg.optimizer.name)
    return Run(cfg=cfg, run_dir=Path(run_dir), store=store, plan=plan, shape=spec.shape,
               counts=counts, mesh=mesh, rules=rules, hyper=hyper, fns=fns,
               grad_accum=grad_accum, steps=steps, config=OmegaConf.to_container(cfg, resolve=True),
               cadence=Cadence(plan.steps, t.log_every, t.eval_every, cfg.checkpoint.every,
                               frozenset(cfg.checkpoint.steps)))
