"""Parameter and FLOP counts: the one ledger that training, MFU, sweeps and analysis all read.

Conventions (recorded with every result, because they move fitted exponents):

* **N, non-embedding parameters** (`params`): every parameter of the Transformer blocks (attention
  and MLP matrices and their RMSNorm scales) plus the final norm. It excludes the token embedding
  and the output (unembedding) matrix. This is Kaplan et al.'s N.
* **Total parameters** (`params_total`): N plus the embedding, plus the output matrix when it is
  not tied to the embedding.
* **Training FLOPs per token** (`flops_per_token`): 3x the forward pass (backward = 2x forward),
  counting every matrix multiply honestly at 2 FLOPs per multiply-add:
    - the block matrices: 2 * N_matmul per token forward (N minus the norm scales),
    - the output layer: 2 * d_model * vocab forward (also when tied: the matmul still runs),
    - attention scores and their weighted sum over the full (unmasked) sequence:
      2 * 2 * seq_len * n_heads * head_dim per layer forward, as XLA computes them;
  so C_token = 6 * (N_matmul + d_model * vocab) + 12 * n_layers * seq_len * n_heads * head_dim.
  The embedding lookup, norms, softmax, RoPE and the SwiGLU gate are elementwise and not counted;
  tests check the total against XLA's own cost analysis of the compiled step.
* **Mixture of experts** (`experts` > 0; every `moe_every`-th block's MLP is a routed layer):
  N counts the **active** parameters, those one token uses: the router (d_model x experts), its
  `top_k` experts and the `shared_experts` (each 3 x d_model x d_expert), so that N, C and the
  fits compare a dense and an MoE model by the compute a token costs. `params_total` counts every
  expert. FLOPs follow the active matmuls (router included); a capacity layer's padding slots and
  the combine's weighted sum are not counted (they are waste, not model FLOPs).
* **Training FLOPs of a run**: C = flops_per_token * D, with D the tokens trained.

`vocab` is always the padded vocabulary the model really computes (see `padded_vocab`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Shape:
    """One model architecture, as the model, the ledger, the bench and the sweeps all read it.

    `vocab` is the padded vocabulary the model really computes and `head_dim` is resolved
    (never 0): `scalelab.train.build.model_shape` derives both, once, from a `model` config and the
    tokenizer.
    """

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab: int
    seq_len: int
    head_dim: int = 0  # 0: d_model // n_heads
    tied_embeddings: bool = False
    experts: int = 0  # routed experts of an MoE layer; 0: a dense model
    top_k: int = 0  # experts each token uses
    d_expert: int = 0  # an expert's SwiGLU width (0: d_ff)
    shared_experts: int = 0  # always-on experts of width d_expert beside the routed ones
    moe_every: int = 1  # every k-th block (the k-th, 2k-th, ...) has an MoE layer; the others d_ff SwiGLU

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.experts and not self.d_expert:
            object.__setattr__(self, "d_expert", self.d_ff)

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block `layer` (from 0) routes its tokens to experts."""
        return bool(self.experts) and (layer + 1) % self.moe_every == 0

    @property
    def moe_layers(self) -> int:
        return self.n_layers // self.moe_every if self.experts else 0


def padded_vocab(vocab: int, multiple: int) -> int:
    """The embedding rows the model allocates: the tokenizer's vocabulary rounded up to `multiple`."""
    return -(-vocab // multiple) * multiple


def attention_params(s: Shape) -> int:
    return s.d_model * s.head_dim * (2 * s.n_heads + 2 * s.n_kv_heads)


def expert_params(s: Shape) -> int:
    """One expert's SwiGLU matrices."""
    return 3 * s.d_model * s.d_expert


def moe_mlp_params(s: Shape, active: bool = True) -> int:
    """An MoE layer's matrices: the router, the experts a token uses (all of them when not
    `active`) and the shared experts."""
    routed = s.top_k if active else s.experts
    return s.d_model * s.experts + (routed + s.shared_experts) * expert_params(s)


def block_matmul_params(s: Shape) -> int:
    """Matrix parameters of one dense Transformer block: q, k, v, o projections and the SwiGLU MLP."""
    return attention_params(s) + 3 * s.d_model * s.d_ff


def all_blocks_matmul_params(s: Shape, active: bool = True) -> int:
    """Matrix parameters of every block; an MoE model's routed layers count their active experts
    (all experts when not `active`)."""
    moe = s.moe_layers
    dense_layers = s.n_layers - moe
    return (s.n_layers * attention_params(s) + dense_layers * 3 * s.d_model * s.d_ff
            + moe * moe_mlp_params(s, active))


def block_norm_params(s: Shape) -> int:
    return 2 * s.d_model


def non_embedding_params(s: Shape, active: bool = True) -> int:
    """N: all block parameters plus the final norm (embedding and output matrix excluded); an MoE
    model's active ones (every expert when not `active`)."""
    return all_blocks_matmul_params(s, active) + s.n_layers * block_norm_params(s) + s.d_model


def embedding_params(s: Shape) -> int:
    return s.vocab * s.d_model


def output_params(s: Shape) -> int:
    """The separate unembedding matrix; zero when tied to the embedding."""
    return 0 if s.tied_embeddings else s.vocab * s.d_model


def total_params(s: Shape) -> int:
    """Every parameter the model holds (all experts, the embedding, the output matrix)."""
    return non_embedding_params(s, active=False) + embedding_params(s) + output_params(s)


def forward_flops_per_token(s: Shape) -> int:
    matmuls = 2 * (all_blocks_matmul_params(s) + s.d_model * s.vocab)
    attention = 4 * s.n_layers * s.seq_len * s.n_heads * s.head_dim
    return matmuls + attention


def flops_per_token(s: Shape) -> int:
    """Training FLOPs per token: forward plus backward (3x forward)."""
    return 3 * forward_flops_per_token(s)


def flops_per_token_6n(s: Shape) -> int:
    """The popular 6N approximation, kept for comparison only (it ignores attention and the output layer)."""
    return 6 * non_embedding_params(s)


def run_flops(s: Shape, tokens: int) -> int:
    return flops_per_token(s) * int(tokens)


def tokens_for_budget(s: Shape, budget: float) -> float:
    """D that spends exactly `budget` training FLOPs with this shape."""
    return budget / flops_per_token(s)


# Words (4 bytes) a training step keeps per token of one microbatch, fitted to XLA's memory analysis
# of compiled steps on CPU (11 shapes, 50K-32M parameters, within 10.2%; NOTES.md): per layer, per unit
# of model width, of MLP width and of attention score (heads x seq_len, where the scores are
# materialized: xla and blockwise attention, not the flash kernels); and per vocabulary entry (logits)
ACTIVATION_WORDS = {"d_model": 2.0, "d_ff": 10.0, "scores": 1.25, "vocab": 2.5}


@dataclass(frozen=True)
class StepMemory:
    """The estimated peak memory of one run's training step, in bytes (`step_memory`)."""

    state: int  # parameters and optimizer state (the train state the step takes and returns)
    grads: int  # fp32 gradients of every parameter
    activations: int  # what the backward pass keeps of one microbatch, and the logits

    @property
    def total(self) -> int:
        return self.state + self.grads + self.activations


def mlp_width(s: Shape) -> float:
    """The MLP width a token's activations have, averaged over the layers (MoE: its active experts)."""
    routed = (s.top_k + s.shared_experts) * s.d_expert if s.experts else s.d_ff
    return (s.moe_layers * routed + (s.n_layers - s.moe_layers) * s.d_ff) / s.n_layers


def step_memory(s: Shape, micro_tokens: int, state_bytes: int, scores: bool = True,
                remat: str = "none") -> StepMemory:
    """The peak memory of a training step over `micro_tokens` tokens a microbatch (batch x seq_len /
    grad_accum) with a train state of `state_bytes`. `scores`: the attention scores are materialized;
    `remat="full"` keeps each layer's input only (and one layer's activations while it is recomputed);
    `dots` is counted as `none` (an upper bound)."""
    w = ACTIVATION_WORDS
    per_layer = w["d_model"] * s.d_model + w["d_ff"] * mlp_width(s) + (w["scores"] * s.n_heads * s.seq_len if scores else 0)
    layers = s.n_layers * per_layer if remat != "full" else s.n_layers * s.d_model + per_layer
    activations = 4 * micro_tokens * (layers + w["vocab"] * s.vocab)
    return StepMemory(state=int(state_bytes), grads=4 * total_params(s), activations=int(activations))


@dataclass(frozen=True)
class Ledger:
    """Every count of one model shape, as a record for summaries and tables."""

    params: int  # N: non-embedding, active
    params_total: int
    params_embedding: int
    flops_per_token: int
    flops_per_token_6n: int
    shape: dict
    params_active: int = 0  # = params (named for MoE summaries)
    experts: int = 0
    top_k: int = 0

    @classmethod
    def of(cls, s: Shape) -> Ledger:
        return cls(
            params=non_embedding_params(s),
            params_active=non_embedding_params(s),
            experts=s.experts,
            top_k=s.top_k,
            params_total=total_params(s),
            params_embedding=embedding_params(s),
            flops_per_token=flops_per_token(s),
            flops_per_token_6n=flops_per_token_6n(s),
            shape=asdict(s),
        )


CONVENTION = (
    "N = non-embedding parameters (blocks + final norm; no embedding or output matrix; MoE: the active ones); "
    "C = 3 x forward FLOPs, counting all matmuls incl. the output layer and full-sequence attention "
    "(6*(N_matmul + d*V) + 12*L*T*H*hd per token)"
)
