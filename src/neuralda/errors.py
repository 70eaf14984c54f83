"""The one user-facing error type: a one-line message, caught once in ``cli.py`` (exit code 2)."""


class NeuraldaError(Exception):
    """Bad input from the user (a file, an option, a run directory): say what and how to fix it."""


class NeuraldaWarning(UserWarning):
    """A result the user may not want (an untrained checkpoint): one line on stderr from the command line."""
