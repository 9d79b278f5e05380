"""Hyperparameter laws: the learning-rate law fitted through per-cell lr sweeps."""
