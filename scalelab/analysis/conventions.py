"""What the numbers in a fit mean: recorded with every result."""

PARAMS = "N = non-embedding parameters (table column 'params')"
TOKENS = "D = training tokens (table column 'tokens')"
FLOPS = ("C = training FLOPs exactly as given in the table column 'flops' (for collected runs: "
         "scalelab's ledger count, per token 6*(N_matmul + d*V) + 12*L*T*H*hd, i.e. forward and backward "
         "of every matrix multiply including the output layer, plus attention over the sequence; times D)")
LOSS = "L = final eval loss in nats per token (table column 'loss')"
SAME_N_AND_C = ("every approach uses this N and this C; where an approach needs C for an (N, D) it has "
                "not run (approach 2's D_opt, approach 3's allocation), C(N, D) = f(N)*D with f(N) the "
                "table's flops/tokens as a function of N")


def base_conventions() -> dict:
    return {"N": PARAMS, "D": TOKENS, "C": FLOPS, "loss": LOSS}
