"""Shared fixtures: a small corpus of lines written for these tests, and a tiny trained run."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"

@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any test whose process opens a connection beyond this machine (the scraper's, httpx's)."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert address[0] in ("127.0.0.1", "localhost"), f"tried to reach {address[0]}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    # Every TCP/UDP connect goes through socket.socket.connect/connect_ex (create_connection, asyncio, anyio,
    # a bare socket): guarding only create_connection let any other path reach the network unnoticed.
    for name in ("connect", "connect_ex"):
        real_connect = getattr(socket.socket, name)

        def guarded_connect(self, address, _real=real_connect):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                assert address[0] in ("127.0.0.1", "localhost", "::1"), f"tried to reach {address[0]}"
            return _real(self, address)

        monkeypatch.setattr(socket.socket, name, guarded_connect)


# Original lines, recombined into poems: enough structure for a tiny model to learn something.
LINES = [
    "love is a lamp left burning by the sea,",
    "the salt wind sings of bread and stone;",
    "your hands are rivers in the night.",
    "i carry the moon in a copper cup",
    "and the rain remembers every name.",
    "love, the earth is warm beneath your feet;",
    "the fishermen dream of silver fish,",
    "night opens its dark blue door —",
    "we don't ask the stars where they go.",
    "the sky’s old bell rings over the hill",
    "love waits like wheat for the harvest sun",
    "and the sea returns, and returns, and returns.",
]


def make_poems(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    poems = []
    for i in range(n):
        stanzas = []
        for _ in range(rng.randint(1, 3)):
            stanzas.append("\n".join(rng.choice(LINES).capitalize() for _ in range(rng.randint(2, 4))))
        poems.append({"title": f"Poem {i}", "author": "Test Poet", "text": "\n\n".join(stanzas)})
    return poems


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", make_poems(40))


def tiny_config(corpus: Path, output: Path, **overrides):
    from neuralda.train import TrainConfig

    values = dict(
        corpus=str(corpus), output=str(output), epochs=3, hidden=32, layers=1, batch_size=8, seq_len=16,
        progress=False, device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run trained for a few epochs on the test corpus (shared by read-only tests)."""
    from neuralda.train import train

    base = tmp_path_factory.mktemp("tiny")
    corpus = write_jsonl(base / "corpus.jsonl", make_poems(40))
    train(tiny_config(corpus, base / "run", epochs=4, save_at=(2, 4)), log=lambda s: None)
    return base / "run"
