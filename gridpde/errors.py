"""Exceptions that the command line turns into exit statuses."""


class CaseError(ValueError):
    """A case file or a command-line argument is wrong (exit status 2).

    The message names the key, the value and what was expected.
    """


class NumericalError(RuntimeError):
    """The solution became non-finite; carries the depth where it was seen."""

    def __init__(self, message: str, depth: float):
        super().__init__(message)
        self.depth = depth


class RunError(RuntimeError):
    """A run failed (exit status 1) after saving what it computed."""


class MassLost(RunError):
    """More mass left the box than ``solver.mass_tol`` allows (status mass_lost)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a batch scheduler's stop): handled like Ctrl-C, exit status 143."""
