"""Typed config schemas, registered in Hydra's ConfigStore.

`scalelab/configs/train.yaml` starts from the `train_schema` node below, so every key a YAML file or a
command-line override sets is checked against these dataclasses (struct mode): an unknown key or a
value of the wrong type fails while Hydra composes the config, before any JAX code runs.
Struct mode does not stop Hydra's `+key=value`, which adds a key that the schema lacks (and is
what Hydra suggests after a typo): `check_keys` refuses every key outside the schema, with or
without `+`, except inside the groups meant to be open (`mesh.rules`). `validate` starts with it and
adds the checks a type cannot express (positive sizes, divisibility, known choices).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# `model.attention` choices; scalelab/model/attention.py implements them
ATTENTION_KERNELS = ("auto", "xla", "cudnn", "blockwise", "splash")
# `model.parametrization` choices; scalelab/model/parametrization.py implements them
PARAMETRIZATIONS = ("standard", "mup")
# `optimizer.name` choices (`optimizer=adamw|muon`, scalelab/configs/optimizer/); scalelab/train/optim.py
OPTIMIZERS = ("adamw", "muon")


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the dotted key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


# `model.moe.dispatch` choices; scalelab/model/moe.py says what each computes and costs
MOE_DISPATCH = ("capacity", "dropless")


@dataclass
class MoeConfig:
    """A mixture-of-experts feed-forward layer (scalelab/model/moe.py); experts=0: a dense model."""

    experts: int = 0  # E routed experts per MoE layer; 0: every block has the dense SwiGLU of d_ff
    top_k: int = 2  # experts each token uses (their router weights renormalised to sum to 1)
    d_expert: int = 0  # an expert's SwiGLU width; 0: model.d_ff (smaller and more experts: finer granularity)
    shared_experts: int = 0  # always-on experts of width d_expert beside the routed ones
    every: int = 1  # every k-th block (the k-th, 2k-th, ...) is an MoE layer; the rest keep d_ff SwiGLU
    # capacity: each sequence gives every expert capacity_factor x seq_len x top_k / E slots, filled in
    # token order (causal), overflow passes through the residual; dropless: every assignment computed
    # (grouped matmuls, jax.lax.ragged_dot). capacity is the default: it costs its FLOPs everywhere,
    # while XLA:CPU runs ragged_dot as a dense dot over all E experts (NOTES.md)
    dispatch: str = "capacity"
    capacity_factor: float = 1.25
    aux_loss: float = 0.01  # load-balancing loss coefficient (mean over MoE layers)
    z_loss: float = 0.001  # router z-loss coefficient (mean over MoE layers)


@dataclass
class ModelConfig:
    name: str = MISSING  # ladder name, e.g. p50k; free text for custom shapes
    d_model: int = MISSING
    n_layers: int = MISSING
    n_heads: int = MISSING
    n_kv_heads: int = MISSING  # < n_heads: grouped-query attention
    d_ff: int = MISSING  # SwiGLU hidden width
    head_dim: int = 0  # 0: d_model // n_heads
    tied_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    vocab_multiple: int = 8  # pad the tokenizer's vocabulary up to a multiple of this
    param_dtype: str = "float32"
    attention: str = "auto"  # auto | xla | cudnn | blockwise | splash: see scalelab/model/attention.py
    lr: float = 3e-3  # the peak learning rate tuned for this size; optimizer.lr defaults to it
    # standard | mup (maximal update parametrization: init, multipliers and per-group Adam lr scale
    # with d_model / mup_base_width; scalelab/model/parametrization.py)
    parametrization: str = "standard"
    mup_base_width: int = 256  # mup: the d_model at which mup equals standard (where lr was tuned)
    # mup: the base model's head_dim (attention scores scale as sqrt(it)/head_dim); 0: this model's own,
    # for families that widen by adding heads of one size (the ladder's, between its head_dim steps)
    mup_base_head_dim: int = 0
    moe: MoeConfig = field(default_factory=MoeConfig)


@dataclass
class DataConfig:
    source: str = "stdlib"  # stdlib: the interpreter's own standard library; prepared: data.path
    path: str | None = None
    tokenizer: str = "byte"
    tokens: float = 1e6  # D, training tokens (a float so that 3e6 works on the command line)
    seq_len: int = 256
    val_fraction: float = 0.05  # stdlib: share of files held out for validation
    prefetch: int = 4  # batches the Grain iterator reads ahead


@dataclass
class TrainConfig:
    batch_size: int = 16  # global, in sequences
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the end only
    eval_tokens: int = 65536  # spread evenly over the validation split (scalelab/data/pipeline.py: spread)
    precision: str = "fp32"  # fp32 | bf16 (bf16 compute, fp32 parameters and optimizer state)
    grad_accum: int = 0  # microbatches per step, accumulated inside the jitted step; 0: auto (step.auto_grad_accum)
    remat: str = "none"  # none | full | dots
    progress: bool = True
    # tasks scored at every evaluation and in the summary: the built-in group `stdlib` or its tasks
    # (scalelab/tasks/builtin.py, scored directly), or any lm-evaluation-harness task or group (the
    # tasks extra; run through scalelab/tasks/harness.py, datasets read offline)
    eval_tasks: list[str] = field(default_factory=list)
    eval_tasks_limit: int = 0  # items per harness task at each evaluation; 0: all (built-in tasks: always all)
    eval_tasks_include: list[str] = field(default_factory=list)  # directories of your own harness task YAMLs
    # seconds without progress before the run ends itself (status failed, stacks in train.log, exit 5);
    # 0: never; unset: scaled from the measured step and eval times (scalelab/runtime/watchdog.py)
    stall_timeout: float | None = None


@dataclass
class OptimizerConfig:
    # adamw | muon (Muon on the hidden matrices, AdamW on embeddings, output layer and norms; one
    # peak lr for both: scalelab/train/optim.py says how Muon's step is scaled)
    name: str = "adamw"
    lr: float = "${model.lr}"  # type: ignore[assignment]
    # a law file (`scalelab analyze lr-law`): the peak lr from the run's N, D (and batch); replaces
    # model.lr, so it cannot be given with optimizer.lr (scalelab/lr_law_file.py)
    lr_law: str | None = None
    # multiplies the peak lr (optimizer.lr or the law's): a learning-rate check at 0.5x and 2x without
    # knowing the lr a run gets (`analyze rung` plans one)
    lr_scale: float = 1.0
    weight_decay: float = 0.1
    clip: float = 1.0  # global-norm clip; 0 disables
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    muon_momentum: float = 0.95  # muon: Nesterov momentum of the matrices' gradients
    # muon: the RMS of a matrix's update before the lr (0.2: about AdamW's), i.e. Muon's step relative to AdamW's
    muon_rms: float = 0.2


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | wsd | constant
    warmup: float = 0.05  # < 1: fraction of the run's steps; >= 1: steps
    final_lr_ratio: float = 0.1  # lr at the end of a cosine or WSD decay, relative to the peak
    decay: float = 0.2  # wsd: fraction of steps in the final decay


@dataclass
class MeshConfig:
    data: int = -1  # -1 fills the remaining devices
    fsdp: int = 1
    expert: int = 1  # expert parallelism: MoE experts split over this axis (tokens exchanged all-to-all)
    tensor: int = 1
    impl: str = "jit"  # jit | shard_map
    # logical axis name -> mesh axes; the one place a parallelism strategy is written down
    rules: dict[str, Any] = field(
        default_factory=lambda: {
            "batch": ["data", "fsdp", "expert"],
            "expert": "expert",  # an MoE layer's experts
            "expert_batch": ["data", "fsdp"],  # the batch while its tokens sit with their experts
            "router": None,
            "embed": "fsdp",
            "mlp": "tensor",
            "heads": "tensor",
            "kv_heads": "tensor",
            "vocab": "tensor",
            "head_dim": None,
            "norm": None,
            "seq": None,
        }
    )


@dataclass
class DistributedConfig:
    coordinator: str | None = None  # host:port; read from SLURM / TPU when they set it
    num_processes: int | None = None
    process_id: int | None = None


@dataclass
class CheckpointConfig:
    every: int = 0  # steps; 0: only at the end
    # extra steps to save at (WSD fork points); each is kept whatever `keep` and `every` say
    steps: list[int] = field(default_factory=list)
    keep: int = 2  # the newest checkpoints kept (beside `steps`)
    async_save: bool = True


@dataclass
class JsonlConfig:
    enabled: bool = True  # metrics.jsonl is the run file (resume, status and analysis read it): always on


@dataclass
class TensorBoardConfig:
    enabled: bool = False


@dataclass
class WandbConfig:
    enabled: bool = False
    # auto: online where W&B credentials are found (WANDB_API_KEY or a login), else offline into the
    # run directory (`wandb sync` uploads it later); WANDB_MODE in the environment wins over auto
    mode: str = "auto"
    project: str = "scalelab"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class MlflowConfig:
    enabled: bool = False
    tracking_uri: str | None = None  # none: MLFLOW_TRACKING_URI, else a file store RUN_DIR/mlruns
    experiment: str = "scalelab"


@dataclass
class LoggerConfig:
    """Where metrics go besides metrics.jsonl: `logger=[tensorboard,wandb,mlflow]` (scalelab/train/trackers/)."""

    jsonl: JsonlConfig = field(default_factory=JsonlConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    init_from: str | None = None  # a checkpoint directory: start from its parameters (fine-tuning)
    # a WSD stable run's directory: start this run's cooldown from its checkpoint at the step where
    # this run's decay begins (full state: parameters, optimizer, data position); see scalelab/sweep/wsd.py
    fork_from: str | None = None
    role: str = "run"  # run | wsd-stable (the shared stable phase of WSD branches; analysis skips it)
    budget: float | None = None  # nominal compute budget (FLOPs), set by the IsoFLOP sweeper


MAX_RUN_NAME = 160  # file systems allow 255 bytes a name


def run_name(override_dirname: str) -> str:
    """A run's directory name: its overrides (`model=p50k,data.tokens=1e6`), or `default`; a name
    too long for a file system keeps its start and ends in a hash of the whole."""
    name = override_dirname.replace("/", "_") or "default"
    if len(name) <= MAX_RUN_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[:MAX_RUN_NAME - 13]}-{digest}"


def compose_train(overrides: list[str]) -> DictConfig:
    """The shipped `train` config with Hydra `overrides` (as `scalelab-train` composes it, outside Hydra's main)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def schema_defaults() -> dict:
    """The schema's default of every key, as nested plain data (interpolations and ??? unresolved)."""
    return OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)


def register_configs() -> None:
    """The schema node `train.yaml` starts from, and the `run_name` resolver its run dirs use."""
    ConfigStore.instance().store(name="train_schema", node=Config)
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)


CHOICES = {
    "data.source": ("stdlib", "prepared"),
    "data.tokenizer": ("byte", "bpe"),
    "train.precision": ("fp32", "bf16"),
    "train.remat": ("none", "full", "dots"),
    "optimizer.name": OPTIMIZERS,
    "schedule.name": ("cosine", "wsd", "constant"),
    "mesh.impl": ("jit", "shard_map"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.attention": ATTENTION_KERNELS,
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
    "model.parametrization": PARAMETRIZATIONS,
    "model.moe.dispatch": MOE_DISPATCH,
}


def _unknown_keys(node, schema, prefix: str = ""):
    """(dotted key, its group's prefix, the group's keys) of every key of `node` that `schema` lacks."""
    hints = typing.get_type_hints(schema)
    for key in node.keys() if isinstance(node, DictConfig) else ():
        name = f"{prefix}{key}"
        if key not in hints:
            yield name, prefix, list(hints)
            continue
        child_type = hints[key]
        if dataclasses.is_dataclass(child_type):  # a typed group: its keys are checked too
            yield from _unknown_keys(node._get_node(key), child_type, name + ".")
        # anything else (a leaf, or an open dict such as mesh.rules) takes any keys


def check_keys(cfg: DictConfig) -> None:
    """Refuse a key the schema does not know (a `+key=value` override, or a YAML file's), naming it."""
    for key, prefix, siblings in _unknown_keys(cfg, Config):
        near = difflib.get_close_matches(key[len(prefix):], siblings, n=1, cutoff=0.6)
        hint = f"; did you mean {prefix}{near[0]}?" if near else f"; known here: {', '.join(siblings)}"
        raise ConfigError(key, f"unknown key (not in the config schema, scalelab/config.py){hint}")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def validate(cfg: DictConfig) -> None:
    """Reject values that would fail late (or silently train the wrong thing). Raises ConfigError."""
    check_keys(cfg)
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(allowed)}; got {value!r}")

    positive = [
        "model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.d_ff",
        "model.vocab_multiple", "model.rope_theta", "model.init_std", "model.mup_base_width",
        "data.tokens", "data.seq_len", "data.prefetch",
        "train.batch_size", "train.log_every", "train.eval_tokens",
        "optimizer.lr", "optimizer.lr_scale", "optimizer.muon_rms", "checkpoint.keep",
    ]
    for key in positive:
        value = _get(cfg, key)
        if value is None or value <= 0:
            raise ConfigError(key, f"must be positive; got {value!r}")
    for key in ["model.head_dim", "model.mup_base_head_dim", "train.eval_every", "train.grad_accum", "checkpoint.every", "optimizer.weight_decay",
                "optimizer.clip", "schedule.warmup", "schedule.final_lr_ratio"]:
        if _get(cfg, key) < 0:
            raise ConfigError(key, f"must be zero or positive; got {_get(cfg, key)!r}")
    stall = _get(cfg, "train.stall_timeout")
    if stall is not None and stall < 0:
        raise ConfigError("train.stall_timeout", f"must be zero (off) or positive seconds, or unset (auto); got {stall!r}")

    m = cfg.model
    if m.n_heads % m.n_kv_heads:
        raise ConfigError("model.n_kv_heads", f"must divide model.n_heads={m.n_heads}; got {m.n_kv_heads}")
    if m.head_dim == 0 and m.d_model % m.n_heads:
        raise ConfigError("model.n_heads", f"must divide model.d_model={m.d_model} (or set model.head_dim)")
    if (m.head_dim or m.d_model // m.n_heads) % 2:
        raise ConfigError("model.head_dim", "must be even for rotary embeddings")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError("data.val_fraction", f"must lie in (0, 1); got {cfg.data.val_fraction}")
    if cfg.data.tokens != int(cfg.data.tokens):
        raise ConfigError("data.tokens", f"must be a whole number of tokens; got {cfg.data.tokens}")
    if cfg.data.source == "prepared" and not cfg.data.path:
        raise ConfigError("data.path", "data=prepared needs data.path=DIR (a `scalelab data prepare` output)")
    if not 0 <= cfg.schedule.decay <= 1:
        raise ConfigError("schedule.decay", f"must lie in [0, 1]; got {cfg.schedule.decay}")
    if cfg.fork_from and cfg.schedule.name != "wsd":
        raise ConfigError("fork_from", "forks a WSD cooldown: needs schedule=wsd")
    if cfg.fork_from and cfg.init_from:
        raise ConfigError("fork_from", "give either fork_from or init_from, not both")
    if cfg.role not in ("run", "wsd-stable"):
        raise ConfigError("role", f"must be run or wsd-stable; got {cfg.role!r}")
    if cfg.optimizer.lr_law and not OmegaConf.is_interpolation(cfg.optimizer, "lr"):
        raise ConfigError("optimizer.lr_law", f"and optimizer.lr={cfg.optimizer.lr} both set the peak learning "
                                              "rate: give one of them")
    if not 0 <= cfg.optimizer.muon_momentum < 1:
        raise ConfigError("optimizer.muon_momentum", f"must lie in [0, 1); got {cfg.optimizer.muon_momentum}")
    if cfg.optimizer.name == "muon" and m.parametrization != "standard":
        raise ConfigError("optimizer.name", f"muon with model.parametrization={m.parametrization} is not supported: "
                          "mup's per-group learning rates are AdamW's (Muon scales each matrix's step by its "
                          "shape itself); use model.parametrization=standard")
    if not cfg.logger.jsonl.enabled:
        raise ConfigError("logger.jsonl.enabled", "metrics.jsonl is the run file (resume, status and analysis "
                          "read it) and is always written; choose trackers with logger=[...]")
    if cfg.schedule.final_lr_ratio > 1:
        raise ConfigError("schedule.final_lr_ratio", f"must be at most 1; got {cfg.schedule.final_lr_ratio}")

    t = cfg.train
    if t.grad_accum and t.batch_size % t.grad_accum:
        raise ConfigError("train.grad_accum", f"must divide train.batch_size={t.batch_size}; got {t.grad_accum}")
    tokens_per_step = t.batch_size * cfg.data.seq_len
    if cfg.data.tokens < tokens_per_step:
        raise ConfigError(
            "data.tokens",
            f"{int(cfg.data.tokens)} tokens is less than one step of train.batch_size x data.seq_len "
            f"= {t.batch_size} x {cfg.data.seq_len} = {tokens_per_step}",
        )
    if t.eval_tokens < cfg.data.seq_len:
        raise ConfigError("train.eval_tokens", f"must hold at least one sequence of data.seq_len={cfg.data.seq_len}")
    warmup = cfg.schedule.warmup
    if warmup >= 1 and warmup != int(warmup):
        raise ConfigError("schedule.warmup", f"is a step count when >= 1 and must be whole; got {warmup}")
    for axis in ("data", "fsdp", "expert", "tensor"):
        value = cfg.mesh[axis]
        if value == 0 or value < -1:
            raise ConfigError(f"mesh.{axis}", f"must be a positive device count or -1; got {value}")
    validate_moe(cfg)


def validate_moe(cfg: DictConfig) -> None:
    """The `model.moe` group (and the expert axis) checked before anything is built."""
    moe, mesh = cfg.model.moe, cfg.mesh
    if moe.experts < 0:
        raise ConfigError("model.moe.experts", f"must be zero (dense) or a positive count; got {moe.experts}")
    for key in ("shared_experts", "d_expert"):
        if moe[key] < 0:
            raise ConfigError(f"model.moe.{key}", f"must be zero or positive; got {moe[key]}")
    if not moe.experts:
        if mesh.expert != 1:
            raise ConfigError("mesh.expert", f"splits MoE experts; this model is dense (model.moe.experts=0): "
                                             f"set mesh.expert=1 (got {mesh.expert})")
        return
    if not 1 <= moe.top_k <= moe.experts:
        raise ConfigError("model.moe.top_k", f"must lie in [1, model.moe.experts={moe.experts}]; got {moe.top_k}")
    if not 1 <= moe.every <= cfg.model.n_layers:
        raise ConfigError("model.moe.every", f"must lie in [1, model.n_layers={cfg.model.n_layers}]; got {moe.every}")
    if moe.capacity_factor <= 0:
        raise ConfigError("model.moe.capacity_factor", f"must be positive; got {moe.capacity_factor}")
    for key in ("aux_loss", "z_loss"):
        if moe[key] < 0:
            raise ConfigError(f"model.moe.{key}", f"must be zero or positive; got {moe[key]}")
    if mesh.expert > 1 and moe.experts % mesh.expert:
        raise ConfigError("mesh.expert", f"must divide model.moe.experts={moe.experts}; got {mesh.expert}")
    if mesh.expert > 1 and mesh.impl == "shard_map" and moe.dispatch == "dropless":
        raise ConfigError("model.moe.dispatch", "dropless experts are not split over devices by mesh.impl=shard_map; "
                                                "use dispatch=capacity, mesh.expert=1 or mesh.impl=jit")
