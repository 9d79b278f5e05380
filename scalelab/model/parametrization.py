"""How initialisation, multipliers and per-parameter learning rates depend on width (`model.parametrization`).

* `standard`: every matrix starts normal(0, init_std) (the residual outputs `wo`, `w_down` also
  divided by sqrt(2 n_layers)), attention scores are scaled by 1/sqrt(head_dim), and Adam uses one
  learning rate for every parameter. A learning rate tuned at one width drifts at another.
* `mup`: the maximal update parametrization for Adam (Yang, Hu et al. 2022, "Tensor Programs V"),
  written relative to a base width, so that with r = d_model / mup_base_width:

  | group                                   | init std      | forward multiplier | Adam lr |
  | --------------------------------------- | ------------- | ------------------ | ------- |
  | hidden matrices (attention, MLP)        | init_std / √r | 1                  | lr / r  |
  | embedding (input)                       | init_std      | 1                  | lr      |
  | output matrix (lm_head, or tied embed)  | init_std      | logits × 1/r       | lr      |
  | vectors (norm scales)                   | 1             | 1                  | lr      |

  and attention scores are scaled by 1/head_dim instead of 1/sqrt(head_dim) (query and key become
  correlated during training, so their dot product grows like head_dim, not its square root). At
  d_model = mup_base_width everything but that attention scale equals `standard`, so the learning
  rate to use at every width is the one tuned at the base width. r is read from d_model alone: the
  rule assumes d_ff and n_heads x head_dim grow in proportion to d_model, as the ladder's do.
  Weight decay is part of the update the group's multiplier scales (as with per-group learning
  rates in AdamW), so a hidden matrix's decay per step is lr / r x weight_decay.

Depth: the parametrization scales with width only. Depth-wise transfer (depth-µP: residual branches
multiplied by 1/sqrt(n_layers) with matching learning rates) is not included: its evidence is for
blocks of one layer, not a Transformer's attention-plus-MLP blocks, and the ladder changes depth in
few, small steps; the fixed 1/sqrt(2 n_layers) of the residual outputs' init is kept as it is.

The learning-rate multipliers are a tree of plain floats shaped like the parameters, chosen by each
parameter's logical axes; `scalelab.train.optim` applies them to Adam's update as constants, so they
need no sharding of their own and are the same for every member of a packed (vmapped) group.
"""

from __future__ import annotations

import jax

STANDARD, MUP = "standard", "mup"


def width_ratio(spec) -> float:
    """r = d_model / mup_base_width under mup; 1 under standard."""
    return spec.d_model / spec.mup_base_width if spec.parametrization == MUP else 1.0


def hidden_std(spec, std: float) -> float:
    """The init std of a hidden matrix whose standard std is `std`."""
    return std / width_ratio(spec) ** 0.5


def logit_multiplier(spec) -> float | None:
    """What the logits are multiplied by (None: nothing, so standard models compute as before)."""
    return 1.0 / width_ratio(spec) if spec.parametrization == MUP else None


def query_multiplier(spec) -> float | None:
    """An extra factor on the queries: the kernels scale by 1/sqrt(head_dim), mup wants 1/head_dim."""
    return spec.head_dim ** -0.5 if spec.parametrization == MUP else None


def group_of(axes: tuple) -> str:
    """The parameter group of a parameter with these logical axes: embedding, output, vector or hidden."""
    if "vocab" in axes:
        return "embedding" if axes[0] == "vocab" else "output"
    return "vector" if len(axes) < 2 else "hidden"


def lr_multipliers(spec, logical_axes: dict) -> dict | None:
    """Each parameter's learning-rate multiplier (a tree like the parameters), or None under standard."""
    if spec.parametrization != MUP:
        return None
    hidden = 1.0 / width_ratio(spec)
    return jax.tree.map(lambda axes: hidden if group_of(axes) == "hidden" else 1.0, logical_axes,
                        is_leaf=lambda x: isinstance(x, tuple))
