"""`scalelab-train`: the Hydra main and the training loop.

One step, from the command line to the jitted function:
  entry.train -> main() here (Hydra, configs/train.yaml) -> Trainer builds the data iterator
  (data/pipeline.py), the model functions (step.py, model.py), the mesh and shardings (mesh.py)
  -> Trainer.fit() -> _loop() calls the jitted `train_step` (step.py) once per step.

The loop never waits for the device on an ordinary step: it dispatches step s, then reads step
s-1's three scalars (loss, grad norm, lr), checks them for NaN/Inf and logs them.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
import traceback
from pathlib import Path

import hydra
import jax
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from scalelab import distributed, hardware, ledger, optim, placement
from scalelab import mesh as meshlib
from scalelab.checkpoint import Checkpointer, CheckpointError, load_params
from scalelab.config import ConfigError, register_configs, validate
from scalelab.data import pipeline
from scalelab.model import ModelSpec
from scalelab.preemption import EXIT_PREEMPTED, PreemptionGuard
from scalelab.progress import Progress
from scalelab.rundir import RunDirError, RunLock, previous_state, truncate_metrics
from scalelab.runlog import RunLog, read_summary, versions
from scalelab.step import ModelFns, auto_grad_accum, build_steps

log = logging.getLogger("scalelab")
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU/GPU found" noise
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter

EXIT_CONFIG_ERROR = 2
EXIT_DIVERGED = 4


class Diverged(RuntimeError):
    def __init__(self, step: int, metrics: dict):
        super().__init__(f"non-finite training metrics at step {step}: {metrics}")
        self.step = step


def run_name(override_dirname: str) -> str:
    """The run's directory name: its overrides (`model=p50k,data.tokens=1e6`), or `default`."""
    return override_dirname.replace("/", "_") or "default"


OmegaConf.register_new_resolver("run_name", run_name, replace=True)
register_configs()


class Trainer:
    """Everything one run needs, built (and checked) before anything is compiled."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        validate(cfg)
        distributed.initialize(cfg.distributed)
        if jax.config.jax_compilation_cache_dir:  # e.g. JAX_COMPILATION_CACHE_DIR, set per sweep
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        t = cfg.train
        self.store = pipeline.open_store(cfg.data)
        self.plan = pipeline.plan(self.store, cfg.data, t.batch_size)
        vocab = self.store.tokenizer.vocab_size
        self.shape = ledger.Shape.from_config(cfg.model, vocab, cfg.data.seq_len)
        self.counts = ledger.Ledger.of(self.shape)
        self.mesh = meshlib.make_mesh(cfg.mesh)
        self.rules = OmegaConf.to_container(cfg.mesh.rules)
        schedule = optim.schedule_values(cfg.schedule, cfg.optimizer.lr, self.plan.steps)
        self.fns = ModelFns(ModelSpec.from_config(cfg, vocab))
        self.grad_accum = t.grad_accum or auto_grad_accum(
            t.batch_size, cfg.data.seq_len, meshlib.batch_shards(self.rules, self.mesh, t.batch_size),
            jax.default_backend())
        self.steps = build_steps(self.fns, optim.make_optimizer(cfg.optimizer), cfg.schedule.name, schedule,
                                 self.mesh, self.rules, t.batch_size, self.grad_accum, impl=cfg.mesh.impl)
        self.is_main = jax.process_index() == 0
        self.tokens = self.plan.steps * self.plan.tokens_per_step
        self.config = OmegaConf.to_container(cfg, resolve=True)

    # ---- bookkeeping ------------------------------------------------------------------------
    def base_summary(self) -> dict:
        cfg = self.cfg
        return {
            "status": "running",
            "model": cfg.model.name,
            "params": self.counts.params,
            "params_total": self.counts.params_total,
            "tokens": self.tokens,
            "flops": self.counts.flops_per_token * self.tokens,
            "flops_per_token": self.counts.flops_per_token,
            "flops_convention": ledger.CONVENTION,
            "budget": cfg.budget,
            "steps": self.plan.steps,
            "tokens_per_step": self.plan.tokens_per_step,
            "epochs": round(self.plan.epochs, 4),
            "repeats_data": self.plan.repeats_data,
            "data": {"source": cfg.data.source, "path": str(self.store.path.resolve()),
                     "tokenizer": self.store.tokenizer.to_dict() if self.store.tokenizer.kind == "byte"
                     else {"kind": self.store.tokenizer.kind, "vocab_size": self.store.tokenizer.vocab_size},
                     "train_tokens": self.store.tokens("train"), "val_tokens": self.store.tokens("val"),
                     "bytes_per_token": self.store.bytes_per_token("val"),
                     "sha256": self.store.manifest.get("sha256")},
            "mesh": dict(self.mesh.shape),
            "grad_accum": self.grad_accum,  # train.grad_accum=0 resolved
            "attention": self.fns.spec.attention,  # model.attention=auto resolved
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "init_from": cfg.init_from,
            "fork_from": cfg.fork_from,
            "role": cfg.role,
            "start": "fine-tune" if cfg.init_from else "fork" if cfg.fork_from else "scratch",
            "resumed_from": [],
            "config": self.config,
            "versions": versions(),
        }

    def checkpoint_meta(self, step: int) -> dict:
        return {"step": step, "model": self.cfg.model.name, "tokenizer": self.store.tokenizer.to_dict(),
                "config": self.config}

    def to_global(self, local_batch: np.ndarray) -> jax.Array:
        global_shape = (self.cfg.train.batch_size, *local_batch.shape[1:])
        return jax.make_array_from_process_local_data(self.steps.batch_sharding, local_batch, global_shape)

    def evaluate(self, params, batches) -> float:
        losses = [self.steps.eval_step(params, self.to_global(b)) for b in batches]
        return float(np.mean([float(x) for x in losses]))

    def bpb(self, loss: float) -> float:
        return loss / math.log(2) / self.store.bytes_per_token("val")

    # ---- the run ----------------------------------------------------------------------------
    def fit(self) -> dict:
        with RunLock(self.run_dir, enabled=self.is_main):
            previous = previous_state(self.run_dir, self.config)
            if previous == "completed":
                log.info("%s already completed with this config; nothing to do", self.run_dir)
                return read_summary(self.run_dir)
            return self._fit(previous)

    def _fit(self, previous: str) -> dict:
        summary = self.base_summary()
        if previous == "resume":
            summary["resumed_from"] = (read_summary(self.run_dir) or {}).get("resumed_from", [])
        if self.is_main:
            log.info("%s", placement.table(self.fns, self.steps, self.mesh))
            log.info("attention %s, %d microbatch(es) per step", self.fns.spec.attention, self.grad_accum)
        ckpt = Checkpointer(self.run_dir, keep=self.cfg.checkpoint.keep, async_save=self.cfg.checkpoint.async_save)
        runlog = None
        started = time.time()
        try:
            state, data_state, start_step = self._initial_state(ckpt)
            if start_step:
                summary["resumed_from"].append(start_step)
            if self.is_main:  # rows an interrupted attempt logged after its last checkpoint are redone
                dropped = truncate_metrics(self.run_dir, start_step)
                if start_step or dropped:
                    log.info("resuming from step %d (dropped %d metrics rows logged after it)", start_step, dropped)
            runlog = RunLog(self.run_dir, enabled=self.is_main)
            runlog.summary(summary)
            with PreemptionGuard() as guard:
                outcome = self._loop(state, data_state, start_step, ckpt, runlog, summary, guard)
                summary.update(outcome)
                summary["status"] = "preempted" if guard.requested else "completed"
                if guard.requested:
                    self._finish(summary, runlog, ckpt, started)
                    guard.hand_over()
        except Diverged as exc:
            summary.update(status="diverged", diverged_at_step=exc.step, error={"message": str(exc)},
                           last_checkpoint=max(ckpt.steps(), default=None))
            self._finish(summary, runlog, ckpt, started)
            raise
        except BaseException as exc:
            if isinstance(exc, SystemExit) and summary.get("status") == "preempted":
                raise
            summary["status"] = "failed"
            summary["error"] = {"message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            self._finish(summary, runlog, ckpt, started)
            raise
        self._finish(summary, runlog, ckpt, started)
        return summary

    def _finish(self, summary: dict, runlog: RunLog | None, ckpt: Checkpointer, started: float) -> None:
        try:
            ckpt.close()
        except Exception as exc:  # noqa: BLE001 - keep the summary even if the last save failed
            summary.setdefault("error", {"message": f"checkpoint close failed: {exc}"})
        summary["wall_seconds"] = round(time.time() - started, 3)
        runlog = runlog or RunLog(self.run_dir, enabled=self.is_main, tensorboard=False)
        runlog.summary(summary)
        runlog.close()

    def _initial_state(self, ckpt: Checkpointer):
        """(state, data iterator state or None, step): resumed, fine-tune start, or fresh."""
        steps, t = self.steps, self.cfg.train
        abstract = jax.eval_shape(steps.init_state, t.seed)
        restored = ckpt.restore_latest(abstract, steps.state_shardings)
        if restored is not None:
            state, data_state, meta = restored
            return state, data_state, int(meta["step"])
        if self.cfg.fork_from:
            return self._fork(abstract)
        state = steps.init_state(t.seed)
        if self.cfg.init_from:
            self._check_tokenizer(self.cfg.init_from)
            state["params"] = load_params(self.cfg.init_from, abstract["params"], steps.state_shardings["params"])
        return state, None, 0

    def fork_step(self) -> int:
        """The step at which this WSD run's decay begins: where it forks from the stable run."""
        return int(optim.schedule_values(self.cfg.schedule, 1.0, self.plan.steps)[3])

    def _fork(self, abstract):
        step = self.fork_step()
        source = Checkpointer(self.cfg.fork_from, keep=1_000_000, async_save=False)
        if step not in source.steps():
            raise CheckpointError(
                f"fork_from={self.cfg.fork_from} has no checkpoint at step {step} (this run's decay start); "
                f"it has {source.steps()}: run the stable phase with checkpoint.steps=[{step}, ...]"
            )
        restored = source.restore_step(step, abstract, self.steps.state_shardings)
        source.close()
        log.info("forked from %s at step %d", self.cfg.fork_from, step)
        state, data_state, _ = restored
        return state, data_state, step

    def _check_tokenizer(self, init_from: str) -> None:
        from scalelab.checkpoint import resolve_checkpoint

        meta_file = resolve_checkpoint(init_from) / "meta" / "metadata"
        if not meta_file.exists():
            return
        theirs = json.loads(meta_file.read_text()).get("tokenizer")
        ours = self.store.tokenizer.to_dict()
        if theirs is not None and theirs != ours:
            raise CheckpointError(
                f"init_from={init_from}: the checkpoint was trained with tokenizer "
                f"{theirs.get('kind')} (vocab {theirs.get('vocab_size')}), but this run's data uses "
                f"{ours.get('kind')} (vocab {ours.get('vocab_size')})"
            )

    def _loop(self, state, data_state, start_step, ckpt, runlog, summary, guard) -> dict:
        cfg, t = self.cfg, self.cfg.train
        peak, peak_method = hardware.peak_flops(t.precision)
        fpt, tps, total = self.counts.flops_per_token, self.plan.tokens_per_step, self.plan.steps
        data_iter = pipeline.train_iterator(self.store, cfg.data, t.batch_size, t.seed, total,
                                            jax.process_index(), jax.process_count())
        if data_state is not None:
            data_iter.set_state(data_state)
        eval_set = pipeline.eval_batches(self.store, cfg.data, t.batch_size, t.eval_tokens,
                                         jax.process_index(), jax.process_count())
        clock = {"step": start_step, "time": time.time(), "eval_seconds": 0.0, "loop_start": time.time()}
        last_row: dict = {}
        eval_loss = summary.get("final_eval_loss")

        def record(step, metrics, evaluate=False) -> None:
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(math.isfinite(values[k]) for k in ("train_loss", "grad_norm")):
                raise Diverged(step, values)
            if not (evaluate or step % t.log_every == 0 or step == total):
                return
            now = time.time()
            seconds = now - clock["time"]
            speed = (step - clock["step"]) * tps / seconds if seconds > 0 else float("nan")
            row = {"step": step, "tokens": step * tps, "flops": step * tps * fpt, **values,
                   "tokens_per_second": speed, "mfu": speed * fpt / peak}
            if evaluate:
                row["eval_loss"] = self.evaluate(state["params"], eval_set)
                row["eval_bpb"] = self.bpb(row["eval_loss"])
                clock["eval_seconds"] += time.time() - now
                now = time.time()
            clock.update(step=step, time=now)
            last_row.clear()
            last_row.update(row)
            runlog.log(row)
            bar.update(step, row)

        pending = None
        first_done = None
        with Progress(total, enabled=self.is_main and t.progress) as bar:
            bar.update(start_step, None)
            for step in range(start_step + 1, total + 1):
                state, metrics = self.steps.train_step(state, self.to_global(next(data_iter)))
                if pending is not None:
                    record(*pending)
                pending = (step, metrics)
                if first_done is None:
                    jax.block_until_ready(metrics)
                    first_done = (step, time.time())
                is_eval = bool(t.eval_every and step % t.eval_every == 0) or step == total
                is_ckpt = bool(cfg.checkpoint.every and step % cfg.checkpoint.every == 0) \
                    or step in cfg.checkpoint.steps
                if is_eval or is_ckpt or guard.requested or step == total:
                    record(step, metrics, evaluate=is_eval)
                    pending = None
                    if is_eval:
                        eval_loss = last_row["eval_loss"]
                    if step == total or is_ckpt or guard.requested:
                        ckpt.save(step, state, data_iter.get_state(), self.checkpoint_meta(step), force=True)
                    if guard.requested:
                        log.warning("signal %s: saved a checkpoint at step %d, stopping", guard.signum, step)
                        break
        end = time.time()
        if eval_loss is None:  # resumed from the final checkpoint of a run killed before its summary
            eval_loss = self.evaluate(state["params"], eval_set)
        result = {"final_eval_loss": eval_loss, "final_train_loss": last_row.get("train_loss"),
                  "final_eval_bpb": self.bpb(eval_loss) if eval_loss is not None else None,
                  "peak_flops": peak, "peak_method": peak_method, "steps_done": clock["step"]}
        if first_done is not None:
            done_step, done_time = first_done
            steady = (clock["step"] - done_step) * tps
            seconds = end - done_time - clock["eval_seconds"]
            speed = steady / seconds if steady > 0 and seconds > 0 else float("nan")
            result.update(tokens_per_second=speed, mfu=speed * fpt / peak,
                          first_step_seconds=round(done_time - clock["loop_start"], 3))
        return result


def clean_failed_start(run_dir: Path) -> None:
    """Remove a run directory that holds only what Hydra wrote before the config was rejected."""
    if not run_dir.exists():
        return
    leftovers = {p.name for p in run_dir.iterdir()}
    if leftovers <= {".hydra", "train.log", "main.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one run into `run_dir` (callable without Hydra, for tests and scripts)."""
    return Trainer(cfg, run_dir).fit()


CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        trainer = Trainer(cfg, run_dir)
        summary = trainer.fit()
    except (ConfigError, RunDirError, CheckpointError, Diverged) as exc:
        print(f"{'diverged' if isinstance(exc, Diverged) else 'error'}: {exc}", file=sys.stderr)
        if isinstance(exc, ConfigError):
            clean_failed_start(run_dir)
        if in_sweep:  # the launcher records the failure and goes on with the other jobs
            raise
        sys.exit(EXIT_DIVERGED if isinstance(exc, Diverged) else EXIT_CONFIG_ERROR)
    log.info("%s: %s, final_eval_loss=%.4f (%.3f bits/byte), %.1f s", run_dir, summary["status"],
             summary["final_eval_loss"], summary["final_eval_bpb"], summary["wall_seconds"])


__all__ = ["EXIT_CONFIG_ERROR", "EXIT_DIVERGED", "EXIT_PREEMPTED", "Trainer", "main", "run"]
