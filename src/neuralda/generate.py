"""Writing poems: stateful sampling from the model's probabilities, one token at a time.

The start words are read once; then each step feeds only the newest token and carries the recurrent state (the
seed re-ran the whole growing sequence at every step). Each poem draws from its own random generator, so a batch
of poems is the same as writing them one by one with the same seeds.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import NeuraldaError
from .tokenizer import POEM_END, Vocab, detokenize, is_word, tokenize


@dataclass
class SamplingConfig:
    """How the next word is drawn; the defaults sample from the model's own probabilities, as the seed did."""

    temperature: float = 1.0
    top_k: int = 0  # keep the k likeliest tokens (0: all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (1: all)

    def check(self) -> None:
        if not self.temperature > 0:
            raise NeuraldaError(f"--temperature must be above 0, got {self.temperature}")
        if self.top_k < 0:
            raise NeuraldaError(f"--top-k must be 0 or more, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise NeuraldaError(f"--top-p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus, Holtzman et al. 2020) on ``(B, V)`` logits."""
    logits = logits.float() / cfg.temperature
    if 0 < cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= cfg.top_p  # keep tokens until the mass before them reaches p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    return logits


def sample_next(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row, drawn from softmax(logits) with that row's generator (inverse-CDF sampling)."""
    probs = logits.float().softmax(-1)
    cdf = probs.cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(cdf.device)
    idx = torch.searchsorted(cdf, (u.float() * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_(max=logits.size(-1) - 1)


def poem_generators(seed: int, n: int) -> list[torch.Generator]:
    """Poem ``i`` of a call with ``seed`` draws from seed ``seed + i``: it is the poem ``seed + i`` writes alone."""
    return [torch.Generator().manual_seed((seed + i) % 2**63) for i in range(n)]


def start_tokens(start: str, vocab: Vocab) -> list[str]:
    """The start words as tokens; a word the model does not know is an error naming the closest ones it does."""
    tokens = tokenize(start, keep_case=vocab.keep_case, end=False)
    for t in tokens:
        if t not in vocab or t == vocab.itos[vocab.unk]:
            known = [w for w in vocab.itos if is_word(w)]
            close = difflib.get_close_matches(t, known, n=5, cutoff=0.6)
            hint = f"; close words it knows: {', '.join(close)}" if close else ""
            raise NeuraldaError(f"the model does not know the start word {t!r}{hint}")
    return tokens


class _OneDNNOff:
    """oneDNN off while any poem is being written on the CPU in this process.

    Its LSTM costs ~16.6 ms a one-token step against ~1.8 ms without it (PERFORMANCE.md). The switch is global to
    the process, so it is counted: poems written side by side (the web server) all run without oneDNN, from their
    first step to their last, and the same seed always writes the same poem.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.before = True

    @contextlib.contextmanager
    def __call__(self, device: torch.device):
        if device.type != "cpu":
            yield
            return
        with self.lock:
            if self.users == 0:
                # torch.backends.mkldnn.flags() would also reset oneDNN's TF32 setting (and warn): one flag only.
                self.before = torch._C._get_mkldnn_enabled()
                torch._C._set_mkldnn_enabled(False)
            self.users += 1
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if self.users == 0:
                    torch._C._set_mkldnn_enabled(self.before)


_one_token_steps = _OneDNNOff()


@torch.no_grad()
def write_poems(
    model,
    vocab: Vocab,
    start: str = "love",
    words: int = 120,
    n: int = 1,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
) -> list[tuple[str, bool]]:
    """``n`` poems written at once from ``start``: (poem text, whether it ended by itself)."""
    sampling = sampling or SamplingConfig()
    sampling.check()
    if words < 1 or n < 1:
        raise NeuraldaError("--words and --n must be at least 1")
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    generators = poem_generators(seed, n)
    prime = start_tokens(start, vocab)
    device = next(model.parameters()).device
    model.eval()
    poems = [list(prime) for _ in range(n)]
    counts = [sum(map(is_word, prime))] * n
    ended = [False] * n
    done = [False] * n
    with _one_token_steps(device):
        logits, state = model(torch.tensor([vocab.encode([POEM_END] + prime)] * n, device=device))
        logits = logits[:, -1]
        for _ in range(4 * words + 50):  # punctuation and breaks are not words: bound the steps too
            filtered = filter_logits(logits, sampling)
            filtered[:, vocab.unk] = -torch.inf  # <unk> is never written
            nxt = sample_next(filtered, generators)
            for i, token in enumerate(vocab.decode(nxt.tolist())):
                if done[i]:
                    continue
                if token == POEM_END:
                    done[i] = ended[i] = True
                    continue
                poems[i].append(token)
                counts[i] += is_word(token)
                done[i] = counts[i] >= words
            if all(done):
                break
            logits, state = model(nxt.unsqueeze(1).to(device), state)
            logits = logits[:, -1]
    return [(detokenize(p), e) for p, e in zip(poems, ended)]


class Poet:
    """A trained poet: ``Poet.load("runs/NAME").write(start="love", words=100, temperature=0.9, seed=1)``."""

    def __init__(self, model, vocab: Vocab, name: str = "") -> None:
        self.model, self.vocab, self.name = model, vocab, name

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> "Poet":
        from .run import Run

        run = Run.open(run_dir)
        model, _ = run.load_model(checkpoint, device=device)
        return cls(model, run.vocab, name=f"{run.name}:{checkpoint}")

    def write(
        self,
        start: str = "love",
        words: int = 120,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> str:
        """One poem from ``start``, as a string."""
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        return write_poems(self.model, self.vocab, start, words, 1, sampling, seed)[0][0]

    def write_many(self, n: int, start: str = "love", words: int = 120, seed: int | None = None, **sampling) -> list[str]:
        """``n`` poems written in one batched pass; poem ``i`` is the one ``write`` gives with ``seed + i``."""
        return [p for p, _ in write_poems(self.model, self.vocab, start, words, n, SamplingConfig(**sampling), seed)]

