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

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)


def padded_vocab(vocab: int, multiple: int) -> int:
    """The embedding rows the model allocates: the tokenizer's vocabulary rounded up to `multiple`."""
    return -(-vocab // multiple) * multiple


def block_matmul_params(s: Shape) -> int:
    """Matrix parameters of one Transformer block: q, k, v, o projections and the SwiGLU MLP."""
    attention = s.d_model * s.head_dim * (2 * s.n_heads + 2 * s.n_kv_heads)
    mlp = 3 * s.d_model * s.d_ff
    return attention + mlp


def block_norm_params(s: Shape) -> int:
    return 2 * s.d_model


def non_embedding_params(s: Shape) -> int:
    """N: all block parameters plus the final norm (embedding and output matrix excluded)."""
    return s.n_layers * (block_matmul_params(s) + block_norm_params(s)) + s.d_model


def embedding_params(s: Shape) -> int:
    return s.vocab * s.d_model


def output_params(s: Shape) -> int:
    """The separate unembedding matrix; zero when tied to the embedding."""
    return 0 if s.tied_embeddings else s.vocab * s.d_model


def total_params(s: Shape) -> int:
    return non_embedding_params(s) + embedding_params(s) + output_params(s)


def forward_flops_per_token(s: Shape) -> int:
    matmuls = 2 * (s.n_layers * block_matmul_params(s) + s.d_model * s.vocab)
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


@dataclass(frozen=True)
class Ledger:
    """Every count of one model shape, as a record for summaries and tables."""

    params: int
    params_total: int
    params_embedding: int
    flops_per_token: int
    flops_per_token_6n: int
    shape: dict

    @classmethod
    def of(cls, s: Shape) -> Ledger:
        return cls(
            params=non_embedding_params(s),
            params_total=total_params(s),
            params_embedding=embedding_params(s),
            flops_per_token=flops_per_token(s),
            flops_per_token_6n=flops_per_token_6n(s),
            shape=asdict(s),
        )


CONVENTION = (
    "N = non-embedding parameters (blocks + final norm; no embedding or output matrix); "
    "C = 3 x forward FLOPs, counting all matmuls incl. the output layer and full-sequence attention "
    "(6*(N_matmul + d*V) + 12*L*T*H*hd per token)"
)
