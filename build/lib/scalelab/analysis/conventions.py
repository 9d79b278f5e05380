"""What the numbers in a fit mean: recorded with every result."""

PARAMS = "N = non-embedding parameters (table column 'params')"
TOKENS = "D = training tokens (table column 'tokens')"
FLOPS = ("C = training FLOPs exactly as given in the table column 'flops' "
         "(for collected runs: scalelab's ledger count)")
LOSS = "L = final eval loss in nats per token (table column 'loss')"


def base_conventions() -> dict:
    return {"N": PARAMS, "D": TOKENS, "C": FLOPS, "loss": LOSS}
