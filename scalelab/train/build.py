"""A run, built from its config: the data store and plan, the model shape and counts, the mesh
and the jitted steps. Building checks everything a config can get wrong before anything is
compiled, and touches no files beyond reading the data store's manifest.

This is the one place a run's Hydra config (`DictConfig`) is read: it is validated and turned,
once, into the typed record `Run` (plain values and the schema's dataclasses of scalelab/config.py),
which everything below the command line is handed. `summary.json` keeps the resolved config as data.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from scalelab import ledger
from scalelab.config import (
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    LoggerConfig,
    TrainConfig,
    compose_train,
    validate,
)
from scalelab.data import pipeline
from scalelab.data.store import TokenStore
from scalelab.interop.hf import convert as hf_convert
from scalelab.interop.hf import directory as hf_directory
from scalelab.lr_law_file import LawFileError, read_law
from scalelab.model.functional import ModelFns, model_fns
from scalelab.model.transformer import ModelSpec, resolve_attention
from scalelab.train import mesh as meshlib
from scalelab.train import optim, trackers
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
        every = bool(self.checkpoint_every and step % self.checkpoint_every == 0)
        return every or step in self.checkpoint_steps or step == self.total

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total


@dataclass(frozen=True)
class Origin:
    """What a run is and where it starts from (recorded in summary.json)."""

    model_name: str
    init_from: str | None  # a checkpoint or `hf:DIR` whose parameters it starts from (fine-tuning)
    fork_from: str | None  # a WSD stable run whose state at this run's decay start it continues
    role: str  # run | wsd-stable
    budget: float | None  # the nominal compute budget an IsoFLOP sweep gave it
    lr_law: str | None  # the law file its peak lr came from

    @property
    def start(self) -> str:
        return "fine-tune" if self.init_from else "fork" if self.fork_from else "scratch"


@dataclass(frozen=True, eq=False)
class Run:
    """Everything one training run needs, built (and checked) before anything is compiled."""

    run_dir: Path
    origin: Origin
    store: TokenStore
    data: DataConfig  # the data group as the pipeline reads it
    plan: pipeline.DataPlan
    train: TrainConfig  # batch size, seed, eval tokens, precision, progress, stall timeout
    shape: ledger.Shape
    counts: ledger.Ledger
    mesh: Any
    rules: dict
    mesh_impl: str  # jit | shard_map
    optimizer: str  # the optimizer's name (the numbers are in `hyper`)
    hyper: optim.Hyper  # the run's schedule and optimizer numbers: an input of the train step
    fns: ModelFns
    grad_accum: int  # train.grad_accum=0 resolved
    steps: Steps
    cadence: Cadence
    checkpoint: CheckpointConfig  # keep, async_save, steps
    logger: LoggerConfig  # the trackers
    config: dict  # the resolved config, as recorded in summary.json and checkpoints

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def tokens(self) -> int:
        return self.plan.steps * self.plan.tokens_per_step

    def to_global(self, local_batch: np.ndarray) -> jax.Array:
        """This process's rows of a batch -> the global batch array, sharded over the mesh."""
        global_shape = (self.train.batch_size, *local_batch.shape[1:])
        return jax.make_array_from_process_local_data(self.steps.batch_sharding, local_batch, global_shape)

    def hyper_input(self):
        """The run's `hyper`, placed as the train step expects it."""
        return jax.device_put(self.hyper.as_input(), self.steps.hyper_sharding)

    def bpb(self, loss: float) -> float:
        """Bits per byte of a validation loss in nats per token."""
        return loss / np.log(2) / self.store.bytes_per_token("val")


def model_shape(model, vocab: int, seq_len: int) -> ledger.Shape:
    """The shape of a `model` config group for a tokenizer of `vocab` ids (padded here)."""
    return ledger.Shape(d_model=model.d_model, n_layers=model.n_layers, n_heads=model.n_heads,
                        n_kv_heads=model.n_kv_heads, d_ff=model.d_ff,
                        vocab=ledger.padded_vocab(vocab, model.vocab_multiple), seq_len=seq_len,
                        head_dim=model.head_dim, tied_embeddings=model.tied_embeddings,
                        experts=model.moe.experts, top_k=model.moe.top_k if model.moe.experts else 0,
                        d_expert=model.moe.d_expert, shared_experts=model.moe.shared_experts,
                        moe_every=model.moe.every)


def model_spec(settings: Config, vocab: int) -> ModelSpec:
    """The model spec of a typed run config for a tokenizer of `vocab` ids."""
    m, precision, seq_len = settings.model, settings.train.precision, settings.data.seq_len
    shape = model_shape(m, vocab, seq_len)
    return ModelSpec(shape=shape, rope_theta=m.rope_theta, norm_eps=m.norm_eps, init_std=m.init_std,
                     param_dtype=m.param_dtype, compute_dtype=precision,
                     attention=resolve_attention(m.attention, precision, seq_len, shape.head_dim),
                     remat=settings.train.remat, parametrization=m.parametrization,
                     mup_base_width=m.mup_base_width, mup_base_head_dim=m.mup_base_head_dim,
                     moe_dispatch=m.moe.dispatch, capacity_factor=m.moe.capacity_factor,
                     moe_aux_loss=m.moe.aux_loss, moe_z_loss=m.moe.z_loss)


def typed(cfg: DictConfig) -> Config:
    """A composed config as the schema's dataclasses (interpolations resolved)."""
    if OmegaConf.get_type(cfg) is not Config:  # made by OmegaConf.create (a notebook): typed by the schema
        cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    return OmegaConf.to_object(cfg)


def recorded_settings(config: dict) -> Config:
    """A recorded run config (a checkpoint's meta, summary.json, .hydra/config.yaml) as the typed
    schema: keys it lacks (added to scalelab since) take their defaults, keys the schema no longer
    has are dropped."""
    schema = OmegaConf.structured(Config)
    return typed(OmegaConf.merge(schema, _known(config, schema)))


def _known(recorded, schema):
    if not isinstance(recorded, dict) or not isinstance(schema, DictConfig):
        return recorded
    open_group = OmegaConf.get_type(schema) is dict  # mesh.rules: any keys
    keys = set(schema.keys())  # (`in` is False for a key whose value is ??? in the schema)
    return {k: v if open_group else _known(v, schema._get_node(k)) for k, v in recorded.items()
            if open_group or k in keys}


def default_settings(overrides: list[str]) -> Config:
    """The shipped `train` config with `overrides` (what a model without a run config trains with)."""
    return typed(compose_train(overrides))


def with_hf_model(cfg: DictConfig) -> DictConfig:
    """`cfg` with its `model` taken from the HF directory that `init_from` names (the architecture
    comes from the pretrained model, not from `model=`); `cfg` itself when it names none."""
    directory = hf_directory.hf_dir(cfg.init_from)
    if directory is None:
        return cfg
    try:
        arch = hf_directory.architecture(directory)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"init_from={cfg.init_from}: {exc}") from exc
    except hf_convert.HFConfigError as exc:
        raise ConfigError("init_from", f"{directory}/{hf_convert.CONFIG_FILE}: {exc}") from exc
    vocab = arch.pop("vocab")
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in arch.items():
            cfg.model[key] = value
        # the multiple that pads this run's tokenizer to the pretrained model's rows
        cfg.model.vocab_multiple = hf_convert.vocab_multiple(pipeline.open_store(cfg.data).tokenizer.vocab_size, vocab)
    return cfg


def with_law_lr(cfg: DictConfig, params: int, tokens: int, batch_tokens: int) -> DictConfig:
    """`cfg` with `optimizer.lr` set by the law file `optimizer.lr_law` (when given) for this run's
    N, D and batch in tokens, times `optimizer.lr_scale`; a copy, so that the recorded config shows the
    lr the run used."""
    path, scale = cfg.optimizer.lr_law, cfg.optimizer.lr_scale
    if not path and scale == 1:
        return cfg
    lr = cfg.optimizer.lr
    if path:
        try:
            law = read_law(path)
        except LawFileError as exc:
            raise ConfigError("optimizer.lr_law", str(exc)) from exc
        lr = law.lr(params, tokens, batch_tokens)
        far = law.outside(params, tokens, batch_tokens)
        if far:
            warnings.warn(f"optimizer.lr_law={path} extrapolates: {'; '.join(far)} (lr {lr:.3g})", stacklevel=2)
    cfg = copy.deepcopy(cfg)
    cfg.optimizer.lr = lr * scale
    return cfg


def check_eval_tasks(names, include=(), limit: int = 0) -> tuple[str, ...]:
    """`train.eval_tasks` with the built-in group expanded; a ConfigError naming the key for a name
    neither built in nor known to the harness (with `train.eval_tasks_include`), for harness tasks
    without the tasks extra, or for several processes (the scorers run on one)."""
    from scalelab.tasks import builtin

    tasks = builtin.expand(list(names))
    if limit < 0:
        raise ConfigError("train.eval_tasks_limit", f"must be 0 (every item) or a positive count; got {limit}")
    others = [n for n in tasks if n not in builtin.TASKS]
    if others:
        try:
            from scalelab.tasks import harness
        except ImportError as exc:
            raise ConfigError("train.eval_tasks", f"{', '.join(others)} are lm-evaluation-harness tasks: "
                              f"pip install 'scalelab[tasks]' ({exc})") from None
        known = set(harness.list_tasks(include))
        unknown = [n for n in others if n not in known]
        if unknown:
            raise ConfigError("train.eval_tasks", f"unknown task(s) {', '.join(map(repr, unknown))}: neither built in "
                              f"({builtin.GROUP}: {', '.join(builtin.TASKS)}) nor known to the harness (with "
                              "train.eval_tasks_include's directories); `scalelab eval --list-tasks` lists them")
    if tasks and jax.process_count() > 1:
        raise ConfigError("train.eval_tasks", "task evaluation in the loop runs in one process; evaluate the "
                          "checkpoints of a multi-process run with `scalelab eval RUN --tasks NAMES`")
    return tuple(tasks)


def build_run(cfg: DictConfig, run_dir, devices=None) -> Run:
    """Validate `cfg` and build its run (jax.distributed must already be initialised).

    `devices` (default: all) are the devices the run's mesh is made of."""
    cfg = with_hf_model(cfg)
    validate(cfg)
    trackers.check(cfg.logger)  # a selected tracker's missing package fails here, before compilation
    store = pipeline.open_store(cfg.data)
    plan = pipeline.plan(store, cfg.data, cfg.train.batch_size)
    spec = model_spec(typed(cfg), store.tokenizer.vocab_size)
    counts = ledger.Ledger.of(spec.shape)
    cfg = with_law_lr(cfg, counts.params, plan.steps * plan.tokens_per_step, cfg.train.batch_size * cfg.data.seq_len)
    s = typed(cfg)  # the record everything below is handed: after this line no DictConfig is read
    t = s.train
    t.eval_tasks = list(check_eval_tasks(t.eval_tasks, t.eval_tasks_include, t.eval_tasks_limit))
    mesh = meshlib.make_mesh(s.mesh, devices)
    rules = dict(s.mesh.rules)
    fns = model_fns(spec)
    grad_accum = t.grad_accum or auto_grad_accum(
        t.batch_size, s.data.seq_len, meshlib.batch_shards(rules, mesh, t.batch_size), jax.default_backend())
    steps = build_steps(fns, mesh, rules_key(rules), t.batch_size, grad_accum, impl=s.mesh.impl,
                        optimizer=s.optimizer.name)
    origin = Origin(model_name=s.model.name, init_from=s.init_from, fork_from=s.fork_from, role=s.role,
                    budget=s.budget, lr_law=s.optimizer.lr_law)
    return Run(run_dir=Path(run_dir), origin=origin, store=store, data=s.data, plan=plan, train=t,
               shape=spec.shape, counts=counts, mesh=mesh, rules=rules, mesh_impl=s.mesh.impl,
               optimizer=s.optimizer.name, hyper=optim.hyper_of(s.optimizer, s.schedule, plan.steps), fns=fns,
               grad_accum=grad_accum, steps=steps,
               cadence=Cadence(plan.steps, t.log_every, t.eval_every, s.checkpoint.every, frozenset(s.checkpoint.steps)),
               checkpoint=s.checkpoint, logger=s.logger, config=OmegaConf.to_container(cfg, resolve=True))
