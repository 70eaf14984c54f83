"""The one user-facing error type: a one-line message, caught once in ``cli.py`` (exit code 2)."""


class NeuraldaError(Exception):
    """Bad input from the user (a file, an option, a run directory): say what and how to fix it."""
