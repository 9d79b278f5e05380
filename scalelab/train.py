"""`scalelab-train`: the Hydra main and the training loop.

One step, from the command line to the jitted function:
  entry.train -> hydra main (this file, configs/train.yaml) -> run() builds the data iterator
  (data/pipeline.py), the model functions (step.py, model.py), the mesh and shardings (mesh.py)
  -> Trainer.fit() calls the jitted `train_step` (step.py) once per step.
"""

from __future__ import annotations

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
from omegaconf import DictConfig, OmegaConf

from scalelab import hardware, ledger, optim
from scalelab import mesh as meshlib
from scalelab.checkpoint import Checkpointer
from scalelab.config import ConfigError, register_configs, validate
from scalelab.data import pipeline
from scalelab.model import ModelSpec
from scalelab.progress import Progress
from scalelab.runlog import RunLog, versions
from scalelab.step import ModelFns, build_steps

log = logging.getLogger("scalelab")
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU/GPU found" noise
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter

EXIT_CONFIG_ERROR = 2


def run_name(override_dirname: str) -> str:
    """The run's directory name: its overrides (`model=p50k,data.tokens=1e6`), or `default`."""
    return override_dirname.replace("/", "_") or "default"


OmegaConf.register_new_resolver("run_name", run_name, replace=True)
register_configs()


class Trainer:
    """Everything one run needs, built (and checked) before anything is compiled."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        validate(cfg)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        t = cfg.train
        self.store = pipeline.open_store(cfg.data)
        self.plan = pipeline.plan(self.store, cfg.data, t.batch_size)
        vocab = self.store.tokenizer.vocab_size
        self.shape = ledger.Shape.from_config(cfg.model, vocab, cfg.data.seq_len)
        self.counts = ledger.Ledger.of(self.shape)
        self.mesh = meshlib.make_mesh(cfg.mesh)
        self.schedule = optim.make_schedule(cfg.schedule, cfg.optimizer.lr, self.plan.steps)
        optimizer = optim.make_optimizer(cfg.optimizer, self.schedule)
        self.fns = ModelFns(ModelSpec.from_config(cfg, vocab))
        self.steps = build_steps(self.fns, optimizer, self.schedule, self.mesh, OmegaConf.to_container(cfg.mesh.rules),
                                 t.batch_size, t.grad_accum)
        self.is_main = jax.process_index() == 0
        self.tokens = self.plan.steps * self.plan.tokens_per_step

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
            "data": {"source": cfg.data.source, "path": str(self.store.path),
                     "train_tokens": self.store.tokens("train"), "val_tokens": self.store.tokens("val"),
                     "bytes_per_token": self.store.bytes_per_token("val"),
                     "sha256": self.store.manifest.get("sha256")},
            "mesh": dict(self.mesh.shape),
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "init_from": cfg.init_from,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "versions": versions(),
        }

    def to_global(self, local_batch: np.ndarray) -> jax.Array:
        global_shape = (self.cfg.train.batch_size, *local_batch.shape[1:])
        return jax.make_array_from_process_local_data(self.steps.batch_sharding, local_batch, global_shape)

    def evaluate(self, params, batches) -> float:
        losses = [self.steps.eval_step(params, self.to_global(b)) for b in batches]
        return float(np.mean([float(x) for x in losses]))

    def bpb(self, loss: float) -> float:
        return loss / math.log(2) / self.store.bytes_per_token("val")

    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        runlog = RunLog(self.run_dir, enabled=self.is_main)
        summary = self.base_summary()
        runlog.summary(summary)
        started = time.time()
        try:
            summary.update(self._loop(runlog))
            summary["status"] = "completed"
        except BaseException as exc:
            summary["status"] = "failed"
            summary["error"] = {"message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            raise
        finally:
            summary["wall_seconds"] = round(time.time() - started, 3)
            runlog.summary(summary)
            runlog.close()
        return summary

    def _loop(self, runlog: RunLog) -> dict:
        cfg, t = self.cfg, self.cfg.train
        peak, peak_method = hardware.peak_flops(t.precision)
        fpt = self.counts.flops_per_token
        steps = self.steps
        data_iter = pipeline.train_iterator(self.store, cfg.data, t.batch_size, t.seed, self.plan.steps,
                                            jax.process_index(), jax.process_count())
        eval_set = pipeline.eval_batches(self.store, cfg.data, t.batch_size, t.eval_tokens,
                                         jax.process_index(), jax.process_count())
        state = steps.init_state(t.seed)
        total = self.plan.steps
        tps = self.plan.tokens_per_step

        def row_of(step: int, metrics, interval_tokens: int, interval_seconds: float) -> dict:
            speed = interval_tokens / interval_seconds if interval_seconds > 0 else float("nan")
            row = {"step": step, "tokens": step * tps, "flops": step * tps * fpt}
            row.update({k: float(v) for k, v in metrics.items()})
            row.update({"tokens_per_second": speed, "mfu": speed * fpt / peak})
            return row

        loop_start = time.time()
        last = {"step": 0, "time": loop_start}
        first_step_done = None
        eval_loss = None
        pending = None  # (step, metrics on device): read one step late, so the host never waits
        with Progress(total, enabled=self.is_main and t.progress) as bar:
            for i in range(total):
                step = i + 1
                state, metrics = steps.train_step(state, self.to_global(next(data_iter)))
                if pending is not None:
                    self._emit(runlog, bar, pending, row_of, last)
                    pending = None
                if first_step_done is None:
                    jax.block_until_ready(metrics)
                    first_step_done = (step, time.time())
                is_eval = (t.eval_every and step % t.eval_every == 0) or step == total
                if is_eval:
                    row = self._emit(runlog, bar, (step, metrics), row_of, last,
                                     evaluate=lambda p=state["params"]: self.evaluate(p, eval_set))
                    eval_loss = row["eval_loss"]
                elif step % t.log_every == 0:
                    pending = (step, metrics)
            if pending is not None:
                self._emit(runlog, bar, pending, row_of, last)
        end = time.time()
        ckpt = Checkpointer(self.run_dir, keep=cfg.checkpoint.keep, async_save=False)
        ckpt.save(total, state, data_iter.get_state(), {"step": total, "model": cfg.model.name}, force=True)
        ckpt.close()
        done_step, done_time = first_step_done
        steady_tokens = (total - done_step) * tps
        steady_seconds = end - done_time - last.get("eval_seconds", 0.0)
        speed = steady_tokens / steady_seconds if steady_tokens > 0 and steady_seconds > 0 else float("nan")
        return {
            "final_eval_loss": eval_loss,
            "final_eval_bpb": self.bpb(eval_loss),
            "final_train_loss": last.get("train_loss"),
            "tokens_per_second": speed,
            "mfu": speed * fpt / peak,
            "peak_flops": peak,
            "peak_method": peak_method,
            "first_step_seconds": round(done_time - loop_start, 3),  # compilation + one step
        }

    def _emit(self, runlog, bar, pending, row_of, last, evaluate=None) -> dict:
        """Log one row; an evaluation runs after the clock stops, so tokens/s counts training only."""
        step, metrics = pending
        metrics = jax.device_get(metrics)
        now = time.time()
        row = row_of(step, metrics, (step - last["step"]) * self.plan.tokens_per_step, now - last["time"])
        if evaluate is not None:
            row["eval_loss"] = evaluate()
            row["eval_bpb"] = self.bpb(row["eval_loss"])
            last["eval_seconds"] = last.get("eval_seconds", 0.0) + time.time() - now
            now = time.time()
        last.update(step=step, time=now, train_loss=row["train_loss"])
        runlog.log(row)
        bar.update(step, row)
        return row


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
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        trainer = Trainer(cfg, run_dir)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        clean_failed_start(run_dir)
        sys.exit(EXIT_CONFIG_ERROR)
    summary = trainer.fit()
    log.info("done: %s final_eval_loss=%.4f (%.3f bits/byte) in %.1f s",
             summary["status"], summary["final_eval_loss"], summary["final_eval_bpb"], summary["wall_seconds"])
