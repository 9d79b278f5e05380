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

  and attention scores scale as 1/head_dim across widths instead of 1/sqrt(head_dim) (query and
  key become correlated during training, so their dot product grows like head_dim, not its square
  root), normalised to standard's 1/sqrt(head_dim) at the base width: sqrt(base head_dim)/head_dim,
  with `model.mup_base_head_dim` the base model's head_dim (0: this model's own, for a family that
  widens by adding heads of one size, where the scale stays standard's). So at d_model =
  mup_base_width a mup model computes exactly what the standard one does, and the learning rate
  (and init_std) tuned there is the one to use at every width. r is read from d_model alone: the
  rule assumes d_ff and n_heads x head_dim grow in proportion to d_model.
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
    """An extra factor on the queries, sqrt(base head_dim / head_dim): with the kernels' 1/sqrt(head_dim)
    the scores scale as sqrt(base head_dim)/head_dim, standard's scale at the base model."""
    if spec.parametrization != MUP:
        return None
    return ((spec.mup_base_head_dim or spec.head_dim) / spec.head_dim) ** 0.5


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
