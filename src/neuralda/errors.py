"""The one user-facing error type: a one-line message, caught once in ``cli.py`` (exit code 2)."""

import os
from typing import Any


class NeuraldaError(Exception):
    """Bad input from the user (a file, an option, a run directory): say what and how to fix it."""


class OptionError(NeuraldaError):
    """A bad value of one option, named as Python spells it (``top_p must be in (0, 1]``) for a caller of ``Poet``
    or a JSON field; the command line names its flag instead (``--top-p must be in (0, 1]``: ``flagged``)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem

    def flagged(self) -> str:
        return f"--{self.option.replace('_', '-')} {self.problem}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C is (training stops cleanly), and said as SIGTERM in the exit status (143)."""


class NeuraldaWarning(UserWarning):
    """A result the user may not want (an untrained checkpoint): one line on stderr from the command line."""


def shown(text: str) -> str:
    """``text`` as a terminal should show it in one line: each control or invisible character as its escape
    (``\\x1b``, ``\\n``), so a server's header or a file's name cannot clear the screen, retitle the window, set
    the clipboard or break the line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def listed(value: Any, name: str) -> list:
    """``value``, a list (or any iterable) of items, as a list (a list as it is: no copy on a hot path such as
    ``Vocab.encode``); one string, bytes or path is an error, not a list of its characters ("runs/x" read as the runs
    "r", "u", ...)."""
    if isinstance(value, (str, bytes, os.PathLike)):
        raise NeuraldaError(f"{name} must be a list, not one {type(value).__name__}: [{value!r}]")
    return value if isinstance(value, list) else list(value)
