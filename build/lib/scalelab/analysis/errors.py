"""Error and warning types raised by the analysis package."""


class AnalysisError(ValueError):
    """Bad or insufficient input for an analysis step; the message says what and where."""


class AnalysisWarning(UserWarning):
    """Something was dropped or assumed; the analysis went on without it."""
