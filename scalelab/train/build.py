"""A run, built from its config: the data store and plan, the model shape and counts, the mesh
and the jitted steps. Building checks everything a config can get wrong before anything is
compiled, and touches no files beyond reading the data store's manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf

from scalelab import ledger
from scalelab.config import validate
from scalelab.data import pipeline
from scalelab.data.store import TokenStore
from scalelab.model.functional import ModelFns
from scalelab.model.transformer import ModelSpec
from scalelab.train import mesh as meshlib
from scalelab.train import optim
from scalelab.train.step import Steps, auto_grad_accum, build_steps


@dataclass
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
    schedule: optim.Schedule
    fns: ModelFns
    grad_accum: int  # train.grad_accum=0 resolved
    steps: Steps
    config: dict  # the resolved config, as recorded in summary.json and checkpoints

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

    def bpb(self, loss: float) -> float:
        """Bits per byte of a validation loss in nats per token."""
        return loss / np.log(2) / self.store.bytes_per_token("val")


def build_run(cfg: DictConfig, run_dir) -> Run:
    """Validate `cfg` and build its run (jax.distributed must already be initialised)."""
    validate(cfg)
    t = cfg.train
    store = pipeline.open_store(cfg.data)
    plan = pipeline.plan(store, cfg.data, t.batch_size)
    vocab = store.tokenizer.vocab_size
    spec = ModelSpec.from_config(cfg, vocab)
    mesh = meshlib.make_mesh(cfg.mesh)
    rules = OmegaConf.to_container(cfg.mesh.rules)
    schedule = optim.schedule_values(cfg.schedule, cfg.optimizer.lr, plan.steps)
    fns = ModelFns(spec)
    grad_accum = t.grad_accum or auto_grad_accum(
        t.batch_size, cfg.data.seq_len, meshlib.batch_shards(rules, mesh, t.batch_size), jax.default_backend())
    steps = build_steps(fns, optim.make_optimizer(cfg.optimizer), cfg.schedule.name, schedule,
                        mesh, rules, t.batch_size, grad_accum, impl=cfg.mesh.impl)
    return Run(cfg=cfg, run_dir=Path(run_dir), store=store, plan=plan, shape=spec.shape,
               counts=ledger.Ledger.of(spec.shape), mesh=mesh, rules=rules, schedule=schedule, fns=fns,
               grad_accum=grad_accum, steps=steps, config=OmegaConf.to_container(cfg, resolve=True))
