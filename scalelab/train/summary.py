"""The record of a run: `summary.json`'s fields at the start, and the checkpoints' metadata."""

from __future__ import annotations

import jax

from scalelab import ledger
from scalelab.train.build import Run
from scalelab.train.runlog import versions


def start_kind(cfg) -> str:
    return "fine-tune" if cfg.init_from else "fork" if cfg.fork_from else "scratch"


def data_record(run: Run) -> dict:
    store = run.store
    tokenizer = store.tokenizer
    return {"source": run.cfg.data.source, "path": store.url or str(store.path.resolve()),
            "tokenizer": tokenizer.to_dict() if tokenizer.kind == "byte"
            else {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
            "train_tokens": store.tokens("train"), "val_tokens": store.tokens("val"),
            "bytes_per_token": store.bytes_per_token("val"), "sha256": store.manifest.get("sha256")}


def base_summary(run: Run) -> dict:
    """`summary.json` as written when the run starts (`status: running`)."""
    cfg, counts = run.cfg, run.counts
    return {
        "status": "running",
        "model": cfg.model.name,
        "params": counts.params,
        "params_total": counts.params_total,
        "tokens": run.tokens,
        "flops": counts.flops_per_token * run.tokens,
        "flops_per_token": counts.flops_per_token,
        "flops_convention": ledger.CONVENTION,
        "budget": cfg.budget,
        "lr": float(run.hyper.schedule.peak),  # the peak lr used (from optimizer.lr_law when set)
        "lr_law": cfg.optimizer.lr_law,
        "steps": run.plan.steps,
        "tokens_per_step": run.plan.tokens_per_step,
        "epochs": round(run.plan.epochs, 4),
        "repeats_data": run.plan.repeats_data,
        "data": data_record(run),
        "mesh": dict(run.mesh.shape),
        "grad_accum": run.grad_accum,
        "attention": run.fns.spec.attention,  # model.attention=auto resolved
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "init_from": cfg.init_from,
        "fork_from": cfg.fork_from,
        "role": cfg.role,
        "start": start_kind(cfg),
        "resumed_from": [],
        "config": run.config,
        "versions": versions(),
    }


def checkpoint_meta(run: Run, step: int) -> dict:
    """What each checkpoint records beside the state: enough to load it without the run dir."""
    return {"step": step, "model": run.cfg.model.name, "tokenizer": run.store.tokenizer.to_dict(),
            "config": run.config}
