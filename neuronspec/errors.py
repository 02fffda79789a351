"""Errors the CLI turns into a one-line message and its own exit status (kept free of heavy imports)."""


class TrainingDiverged(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradient norm (exit status 3)."""
