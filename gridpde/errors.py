"""Exceptions that the command line turns into exit statuses."""


class CaseError(ValueError):
    """A case file or a command-line argument is wrong (exit status 2).

    The message names the key, the value and what was expected.
    """


class RunError(RuntimeError):
    """A run failed (exit status 1) after saving what it computed."""
