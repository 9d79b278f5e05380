"""The coordinate check: how each layer's activation size changes with width during the first steps.

For every parametrization and width it trains a small model (the real train step: model, AdamW,
the parametrization's learning-rate multipliers) for a few steps on the built-in corpus, and before
each step measures the RMS of the activations `embedding`, `block0` ... (each block's output, the
residual stream) and `logits` on one fixed batch. Under a parametrization whose hyperparameters
transfer across width (mup), every curve of RMS against width is flat at every step; under
standard, the updates of the hidden and output matrices grow with width, so the block outputs and
above all the logits grow with width after the first step. `slope` is the fitted exponent of
RMS ~ width^slope at the last step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.config import MeshConfig, OptimizerConfig, ScheduleConfig
from scalelab.data.stdlib import open_stdlib
from scalelab.ledger import padded_vocab
from scalelab.model.functional import model_fns
from scalelab.model.transformer import ModelSpec
from scalelab.train import mesh as meshlib
from scalelab.train import optim
from scalelab.train.step import build_steps, rules_key


@dataclass(frozen=True)
class Settings:
    """What a coordinate check trains: the same small model at several widths, a few steps each."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    parametrizations: tuple[str, ...] = ("standard", "mup")
    steps: int = 6  # optimizer steps; activations are measured before each and after the last
    n_layers: int = 2
    n_heads: int = 4  # fixed, so that head_dim grows with width (and mup's 1/head_dim matters)
    ff_ratio: int = 4  # d_ff = ff_ratio x d_model, exactly proportional to the width
    batch_size: int = 4
    seq_len: int = 64
    lr: float = 1e-2  # the peak (constant, no warmup) AdamW learning rate
    base_width: int = 32  # model.mup_base_width
    seed: int = 0


def spec_for(settings: Settings, width: int, parametrization: str, vocab: int) -> ModelSpec:
    s = settings
    return ModelSpec.build(seq_len=s.seq_len, d_model=width, n_layers=s.n_layers, n_heads=s.n_heads,
                           n_kv_heads=s.n_heads, d_ff=s.ff_ratio * width, vocab=padded_vocab(vocab, 8),
                           attention="xla", parametrization=parametrization, mup_base_width=s.base_width,
                           mup_base_head_dim=s.base_width // s.n_heads)


def corpus_batches(settings: Settings, count: int) -> tuple[np.ndarray, int]:
    """`count` batches of random windows of the built-in corpus (Bx(T+1) each), and its vocabulary."""
    store = open_stdlib()
    tokens = store.shards("train")[0]
    rng = np.random.default_rng(settings.seed)
    rows = settings.batch_size * count
    starts = rng.integers(0, len(tokens) - settings.seq_len - 1, rows)
    windows = np.stack([np.asarray(tokens[s:s + settings.seq_len + 1], np.int32) for s in starts])
    return windows.reshape(count, settings.batch_size, settings.seq_len + 1), store.tokenizer.vocab_size


def layer_order(name: str) -> tuple:
    """embedding, block0, block1, ..., logits: the order of the layers in the network."""
    if name.startswith("block"):
        return (1, int(name[len("block"):]))
    return (0 if name == "embedding" else 2, 0)


def activation_rms(fns, params, windows_BxT1) -> dict:
    """RMS of every probed activation (see `Transformer.__call__`) on one batch."""
    probes: dict = {}
    fns.apply(params, windows_BxT1[:, :-1], probes=probes)
    return {name: jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)))) for name, x in probes.items()}


def train_and_probe(spec: ModelSpec, settings: Settings, batches_SxBxT1, probe_BxT1) -> tuple[dict, list]:
    """RMS per activation per step (steps 0 .. settings.steps) and the training losses of one model."""
    fns = model_fns(spec)
    mesh = meshlib.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    rules = MeshConfig().rules
    steps = build_steps(fns, mesh, rules_key(rules), settings.batch_size, 1)
    hyper = optim.hyper_of(OptimizerConfig(lr=settings.lr), ScheduleConfig(name="constant", warmup=0), settings.steps)
    hyper = jax.device_put(hyper.as_input(), steps.hyper_sharding)
    probe = jax.jit(partial(activation_rms, fns))
    state = steps.init_state(settings.seed)
    rms: dict[str, list[float]] = {}
    losses = []
    for t in range(settings.steps + 1):
        values = jax.device_get(probe(state["params"], probe_BxT1))
        for name in sorted(values, key=layer_order):
            rms.setdefault(name, []).append(float(values[name]))
        if t < settings.steps:
            state, metrics = steps.train_step(state, jax.device_put(batches_SxBxT1[t], steps.batch_sharding), hyper)
            losses.append(float(metrics["train_loss"]))
    return rms, losses


def slope(widths, values) -> float:
    """The exponent of a power-law fit values ~ widths^slope (least squares in log-log)."""
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def coord_check(settings: Settings | None = None, progress=None) -> dict:
    """The check's numbers: `rms[parametrization][layer][step][width index]`, `slopes[parametrization]
    [layer]` (at the last step), `losses[parametrization][width]` and the settings."""
    settings = settings or Settings()
    batches, vocab = corpus_batches(settings, settings.steps + 1)
    probe_BxT1, train_SxBxT1 = batches[0], batches[1:]
    rms, slopes, losses = {}, {}, {}
    for name in settings.parametrizations:
        by_width = []
        for width in settings.widths:
            layers, losses.setdefault(name, {})[str(width)] = train_and_probe(
                spec_for(settings, width, name, vocab), settings, train_SxBxT1, probe_BxT1)
            by_width.append(layers)
            if progress:
                progress(f"{name} d_model={width}: logits RMS {layers['logits'][0]:.3g} -> {layers['logits'][-1]:.3g}")
        rms[name] = {layer: [[w[layer][t] for w in by_width] for t in range(settings.steps + 1)]
                     for layer in by_width[0]}
        slopes[name] = {layer: slope(settings.widths, per_step[-1]) for layer, per_step in rms[name].items()}
    return {"settings": asdict(settings), "widths": list(settings.widths), "steps": list(range(settings.steps + 1)),
            "rms": rms, "slopes": slopes, "losses": losses}


def figure(result: dict):
    """Activation RMS against width: a row per parametrization, a panel per layer, a line per step."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from scalelab.analysis import styled

    @styled
    def draw():
        names, widths, steps = list(result["rms"]), result["widths"], result["steps"]
        layers = list(result["rms"][names[0]])
        fig = Figure(figsize=(2.5 * len(layers), 2.2 * len(names) + 0.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(names), len(layers), squeeze=False, sharex=True)
        colors = colormaps["viridis"](np.linspace(0, 0.9, len(steps)))
        for row, name in enumerate(names):
            for col, layer in enumerate(layers):
                ax = axes[row][col]
                for t, color in zip(steps, colors):
                    ax.plot(widths, result["rms"][name][layer][t], marker="o", markersize=3, color=color,
                            label=f"step {t}")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(widths, [str(w) for w in widths])
                ax.grid(True, alpha=0.3, linewidth=0.6)
                ax.set_title(f"{name} {layer}: slope {result['slopes'][name][layer]:+.2f}", fontsize=8.5)
                if row == len(names) - 1:
                    ax.set_xlabel("width (d_model)")
                if col == 0:
                    ax.set_ylabel("activation RMS")
        axes[0][-1].legend(loc="best", fontsize=6)
        fig.subplots_adjust(left=0.08, right=0.99, bottom=0.12, top=0.93, wspace=0.35, hspace=0.4)
        return fig

    return draw()
