"""scalelab's Hydra sweepers (`hydra/sweeper=isoflop`); found by Hydra's scan of `hydra_plugins`."""
