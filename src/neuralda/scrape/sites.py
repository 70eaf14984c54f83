"""Known poetry sites as data (``presets.json``): selectors that fill the ones a user leaves out. Layouts change."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources

from ..errors import NeuraldaError

SELECTOR_FIELDS = ("links", "next", "title", "body", "author_css")


@dataclass(frozen=True)
class Preset:
    """One site: where to start, its selectors, and ``checked``, when a person last saw them work."""

    name: str
    site: str
    description: str
    checked: str
    start_url: str = ""
    links: str | None = None
    next: str | None = None
    title: str | None = None
    body: str | None = None
    author_css: str | None = None

    def selectors(self) -> dict[str, str]:
        """The selectors this preset sets, by ScrapeConfig field name."""
        return {k: v for k, v in asdict(self).items() if k in SELECTOR_FIELDS and v}


def load_presets() -> dict[str, Preset]:
    """Every preset in the package's ``presets.json``, by name."""
    text = resources.files("neuralda.scrape").joinpath("presets.json").read_text(encoding="utf-8")
    return {entry["name"]: Preset(**entry) for entry in json.loads(text)["presets"]}


def list_presets() -> list[tuple[str, str, str]]:
    """(name, description, checked) of every preset, for ``neuralda scrape --list-presets``."""
    return [(p.name, p.description, p.checked) for p in load_presets().values()]


def get_preset(name: str) -> Preset:
    """The preset called ``name``; NeuraldaError listing the known ones otherwise."""
    presets = load_presets()
    if name not in presets:
        raise NeuraldaError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    return presets[name]
