"""Errors the CLI turns into a one-line message and its own exit status (kept free of heavy imports)."""
import signal


class TrainingDiverged(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradient norm (exit status 3)."""


class Interrupted(Exception):
    """A run stopped on SIGINT/SIGTERM after saving a checkpoint to resume from (exit status 128 + signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + int(self.signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name
