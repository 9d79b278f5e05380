"""Decisions from fitted laws: compare two studies (compute multipliers), suggest the next runs."""
