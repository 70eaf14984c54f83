"""neuralda: teach a computer to write poems in a poet's voice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import NeuraldaError

__version__ = "0.1.0"
__all__ = ["NeuraldaError", "Poet", "__version__"]

if TYPE_CHECKING:
    from .generate import Poet


def __dir__() -> list[str]:
    return sorted({*globals(), "Poet"})  # so completion and help() offer the lazily imported Poet


def __getattr__(name: str):
    # Poet pulls in torch; import it only when asked so `neuralda --help` stays fast.
    if name == "Poet":
        from .generate import Poet

        return Poet
    raise AttributeError(f"module 'neuralda' has no attribute {name!r}")
