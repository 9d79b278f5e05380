"""Fitting scaling laws: Kaplan, Chinchilla approaches 1-3, law forms as data, the one robust fitter, predictions."""
