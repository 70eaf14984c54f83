"""Writing poems: stateful sampling from the model's probabilities, one token at a time.

The start words are read once; then each step feeds only the newest token and carries the recurrent state (the
seed re-ran the whole growing sequence at every step). Each poem draws from its own random generator, so a batch
of poems is the same as writing them one by one with the same seeds, bit for bit where the model's step is
(``batch_invariant``: every model's packed steps on the CPU); a GPU's products may round a rare word otherwise.
"""

from __future__ import annotations

import difflib
import functools
import numbers
import os
import threading
import unicodedata
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .corpus import normalize_text
from .errors import NeuraldaError, NeuraldaWarning, OptionError
from .tokenizer import LINE, POEM_END, STANZA, Vocab, detokenize, is_word, tokenize


MIN_TEMPERATURE = 1e-6
MAX_TEMPERATURE = float(torch.finfo(torch.float32).max)  # the scores are divided by it in float32 (the penalty too)
DEFAULT_START = "love"  # the seed's blog wrote every poem from it
FORMS = {"free": 0, "couplet": 2, "tercet": 3, "quatrain": 4}  # lines per stanza (0: as the model likes)
# Poems written at once: what a step holds grows with them (scores, masks: ~100 KB a poem at 5,437 words), and
# past a few dozen rows a CPU step costs as much per poem; a poem is the same in any batch (see above).
WRITE_BATCH = 256
# Scores a step holds at once (each is held ~7 times: softmax, running sums, masks): fewer poems a batch for a big
# vocabulary (256 poems over 256,000 words held 2.3 GB; 32 at once, 0.7 GB).
WRITE_SCORES = 1 << 23


class NoDistribution(NeuraldaError):
    """The model's next-word scores hold NaN or +inf, or block every word: there is nothing to draw from."""


class Stopped(Exception):
    """Writing stopped before its poems were done: no one waits for them any more (``write_poems``' ``stop``)."""


@dataclass
class SamplingConfig:
    """How the next word is drawn. Temperature 1 with no filter samples from the model's own probabilities, as the
    seed did; the defaults trim the unlikely tail a little (measured on the six corpora: 6-word copies stay at 0%,
    distinct-2 0.89 against 0.94, and 72% of poems end by themselves against 68%; see the README)."""

    temperature: float = 0.9
    top_k: int = 0  # keep the k likeliest tokens (0: all)
    top_p: float = 0.95  # keep the smallest set whose probability reaches p (1: all)
    repetition_penalty: float = 1.0  # CTRL's penalty (Keskar et al. 2019) on words the poem already has (1: none)

    def check(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):
            _check_type(name, getattr(self, name), numbers.Real)
            setattr(self, name, float(getattr(self, name)))  # a Fraction, numpy's float16: a float for torch
        _check_type("top_k", self.top_k, numbers.Integral)
        self.top_k = int(self.top_k)
        # Below the least, float32 scores turn into 0/0; above the most, float32 has no such number: -inf / inf.
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise OptionError(
                "temperature", f"must be a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE:.3g}, got {self.temperature}"
            )
        if self.top_k < 0:
            raise OptionError("top_k", f"must be 0 or more, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise OptionError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 1 <= self.repetition_penalty <= MAX_TEMPERATURE:  # above, float32 makes it inf, and 0 * inf NaN
            raise OptionError(
                "repetition_penalty", f"must be a number from 1 to {MAX_TEMPERATURE:.3g}, got {self.repetition_penalty}"
            )


def _check_type(name: str, value: object, kind: type) -> None:
    """A one-line error unless ``value`` is a ``kind`` (numbers.Real or numbers.Integral; numpy's count, bool not)."""
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "a whole number" if kind is numbers.Integral else "a number"
        raise OptionError(name, f"must be {what}, got {value!r}")


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Repetition penalty on ``seen`` tokens, then top-k on ``(B, V)`` logits; the temperature and top-p are applied
    while drawing (``sample_next``). Each row keeps at least its likeliest token."""
    logits = logits.float()
    if seen is not None and cfg.repetition_penalty != 1.0:
        p = cfg.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    if 0 < cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    return logits


NUCLEUS_DRAWS = 4  # draws from a whole row before its nucleus is sorted out; each lands inside with odds >= top-p


def sample_next(
    logits: torch.Tensor, generators: list[Uniforms], top_p: float = 1.0, temperature: float = 1.0
) -> torch.Tensor:
    """One token per row, drawn from softmax(logits / temperature) with that row's generator (inverse-CDF sampling);
    with ``top_p`` < 1 from the row's nucleus only (Holtzman et al. 2020): the tokens whose likelier tokens hold less
    than ``top_p`` of the probability, all of them where several are as likely as the least likely one kept.

    The nucleus is never sorted out up front (32 rows of 5,437 scores took 5.2 ms to sort on our CPUs, more than
    the model's step): a token drawn from the whole row is kept if it lies inside, else the row draws again
    (rejection sampling, which keeps the nucleus's odds); a row still outside after ``NUCLEUS_DRAWS`` draws takes
    its nucleus from a sort. A row's draws depend only on its own scores and generator, never on the batch.

    A row with a NaN or +inf score, or with every token blocked, has no distribution to draw from: an error.
    """
    # The odds unnormalised, the likeliest 1 (shifted first: a low temperature can then never overflow to +inf);
    # each sum below is a share of the row's own total.
    logits = logits.float()
    weights = logits - logits.amax(-1, keepdim=True)
    weights = (weights.div_(temperature) if temperature != 1.0 else weights).exp_()
    cdf = _running_sum(weights)
    if not bool(cdf[:, -1].isfinite().all()):  # NaN or +inf scores, or none above -inf, make the odds NaN
        raise NoDistribution(
            "the model gave no usable next-word probabilities (NaN or infinite scores, or every word blocked): "
            "is the checkpoint damaged?"
        )
    picks = _draw(cdf, generators)
    if top_p >= 1.0:
        return picks
    rows = torch.arange(len(generators), device=weights.device)  # the rows whose newest draw is to be checked
    for draw in range(NUCLEUS_DRAWS):
        if draw:  # the rows that drew outside their nucleus draw again
            picks[rows] = _draw(cdf[rows], [generators[i] for i in rows.tolist()])
        w_rows, total, picked = (weights[rows], cdf[rows, -1], picks[rows]) if draw else (weights, cdf[:, -1], picks)
        floor = w_rows.gather(1, picked.unsqueeze(-1))
        # A token holding more than 1 - top_p of the whole is inside (what is likelier holds less than the rest):
        # most draws, so that a lone poem's step on a CPU mostly skips the sums (a GPU sums: asking would wait on it).
        unsure = floor[:, 0] <= (1.0 - top_p) * total
        if weights.device.type != "cpu" or bool(unsure.any()):
            likelier = _mass_above(w_rows, floor)
            unsure &= (likelier > 0) & (likelier >= top_p * total)  # the likeliest is always kept
        rows = rows[unsure]
        if not len(rows):
            return picks
    w_rows = weights[rows]  # outside at every draw: draw from the nucleus itself
    nucleus = w_rows.masked_fill(w_rows < _least_in_nucleus(w_rows, top_p), 0.0)
    picks[rows] = _draw(_running_sum(nucleus), [generators[i] for i in rows.tolist()])
    return picks


_FLOAT32_SCANS = ("cpu", "mps")  # devices whose sums stay in float32


def _sum_dtype(x: torch.Tensor) -> torch.dtype:
    """What a row's sums are added in. A CPU adds them in an order set by the row alone, so its bits never depend on
    the batch; a GPU adds in an order that depends on the number of rows, so there in float64, where that moves no
    draw in practice (Apple's MPS has no float64).
    In float32 a token under one float32 step of its row's total (~6e-8 of it) has a slot of width 0 or a few times
    its odds, though such tokens keep their mass together; only --top-p 1 keeps them (0.95 never does). float64 on
    the CPU cost 1.8 ms a step of 32 poems (2.8 against 1.0 ms): the batched pass would lose a third of its speed."""
    return torch.float32 if x.device.type in _FLOAT32_SCANS else torch.float64


def _running_sum(x: torch.Tensor) -> torch.Tensor:
    """Cumulative sums along each row, added in order (``_sum_dtype``)."""
    return x.to(_sum_dtype(x)).cumsum(-1)


def _row_sums(x: torch.Tensor, width: int = 64) -> torch.Tensor:
    """Each row's sum, added in an order set by the row alone: blocks of ``width`` (each added by one thread, in
    vector registers), then their running sum. A whole row's running sum adds one number at a time (0.10 ms for 32
    rows of 5,437 here, against 0.02 for the blocks); torch's own sum splits a long lone row between threads."""
    whole, dtype = x.size(-1) // width * width, _sum_dtype(x)
    blocks = x[:, :whole].unflatten(-1, (-1, width)).sum(-1, dtype=dtype)
    return torch.cat([blocks, x[:, whole:].sum(-1, keepdim=True, dtype=dtype)], -1).cumsum(-1)[:, -1]


def _mass_above(weights: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """The weight each row of ``weights`` holds in tokens likelier than its ``floor`` ``(B, 1)``, as ``(B,)``: their
    excess over the floor (``_row_sums``), plus the floor times their count (an exact sum in any order): one pass fewer
    than a masked sum (NaN rows never get here: they are an error)."""
    excess = (weights - floor).relu_()  # above the floor exactly where likelier: x - y is 0 only where x == y
    return _row_sums(excess) + floor[:, 0] * excess.sign_().sum(-1)


def _draw(cdf: torch.Tensor, generators: list[Uniforms]) -> torch.Tensor:
    """One index per row of ``cdf`` (cumulative weights), each row drawing a uniform from its own generator."""
    total = cdf[:, -1:]
    # float32 before it leaves the CPU: Apple's MPS has no float64.
    u = torch.tensor([g.next() for g in generators], dtype=torch.float64).float().to(cdf.device)
    # Kept below the total: a draw that rounds up to it would land past the last token, possibly an impossible one.
    target = torch.minimum(u.unsqueeze(-1) * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def _least_in_nucleus(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Each row's smallest probability that top-p keeps, found by sorting the row, as ``(B, 1)``."""
    ranked = probs.sort(-1, descending=True).values
    mass = _running_sum(ranked)
    before = mass - ranked
    return ranked.masked_fill((before > 0) & (before >= p * mass[:, -1:]), torch.inf).amin(-1, keepdim=True)


def poem_seeds(seed: int | Iterable[int] | None, n: int) -> list[int]:
    """The seeds of ``n`` poems: ``seed + i`` for poem ``i`` (none: a random first seed), or a list's own."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return list(range(int(seed), int(seed) + n))
    if not isinstance(seed, Iterable) or isinstance(seed, (str, bytes)):
        raise NeuraldaError(f"seed must be a whole number or a list of them, got {seed!r}")
    seeds = list(seed)
    for s in seeds:
        _check_type("each seed", s, numbers.Integral)
    if len(seeds) != n:
        raise NeuraldaError(f"{len(seeds)} seeds for {n} poems")
    return [int(s) for s in seeds]


class Uniforms:
    """One poem's uniform draws in [0, 1) from its own torch generator, taken ``BLOCK`` at a time: the numbers one
    ``torch.rand`` call each would give (a CPU generator fills a tensor in order), for ~3 us a block instead of 2 us
    a draw (32 poems' draws took 0.065 ms a step one call each)."""

    BLOCK = 128

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed % 2**63)
        self._left: list[float] = []

    def next(self) -> float:
        if not self._left:
            self._left = torch.rand(self.BLOCK, generator=self.generator, dtype=torch.float64).tolist()[::-1]
        return self._left.pop()


def poem_generators(seed: int | Iterable[int], n: int) -> list[Uniforms]:
    """One generator per poem: poem ``i`` of a call with ``seed`` draws from seed ``seed + i``, so it is the poem
    ``seed + i`` writes alone; a list gives each poem its own seed."""
    return [Uniforms(s) for s in poem_seeds(seed, n)]


def default_start(vocab: Vocab) -> str:
    """``DEFAULT_START`` where the model knows it, else "": the poem begins where the model likes (a Spanish poet's
    model has no "love")."""
    return DEFAULT_START if DEFAULT_START in vocab else ""


def _folded(word: str) -> str:
    """``word`` without case or accents: how a keyboard without them types it."""
    return "".join(c for c in unicodedata.normalize("NFD", word.casefold()) if not unicodedata.combining(c))


def start_tokens(start: str, vocab: Vocab) -> list[str]:
    """The start words as tokens, cleaned as the corpus was (a soft hyphen or U+2011 typed or pasted in a word would
    make it unknown); a mark spaced otherwise than in the corpus ("love ," or "love—sea") is read as the model knows
    it, and so is a word typed with the other apostrophe (a phone types "love’s", a desktop keyboard "love's"); a word
    the model does not know is an error naming the closest ones it does."""
    tokens = tokenize(normalize_text(start), keep_case=vocab.keep_case, end=False)
    known = []
    for t in tokens:
        bare = t.strip(" ")
        if is_word(t):
            spellings = [t, t.replace("\u2019", "'"), t.replace("'", "\u2019")]
        else:
            spellings = [t, bare, f" {bare}", f"{bare} ", f" {bare} "]
        spelling = next((s for s in spellings if s in vocab and s != vocab.itos[vocab.unk]), None)
        if spelling is None:
            words = [w for w in vocab.itos if is_word(w)]
            # The same word but for accents or case first ("tu" -> "tú", "mio" -> "mío"): difflib ranks "mito",
            # "miro", "mido", "mi" and "mismo" above "mío", and gives nothing for a two-letter word.
            same = [w for w in words if _folded(w) == _folded(t)]
            close = (same + [w for w in difflib.get_close_matches(t, words, n=5, cutoff=0.6) if w not in same])[:5]
            hint = f"; close words it knows: {', '.join(close)}" if close else ""
            raise NeuraldaError(f"the model does not know the start word {bare!r}{hint}")  # "<", not "< "
        known.append(spelling)
    return known


_cpu_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (weights' versions, dtype, steps)
_cpu_steps_lock = threading.Lock()  # the web server writes from several threads


def writing_steps(model, device: torch.device, precision: str = "auto"):
    """What writes one token at a time: on the CPU the model's packed steps (``LSTMSteps``, ``GPTSteps``) in bfloat16
    where ``precision`` resolves to bf16 (``auto``: CPUs with bf16 units), else in float32; on other devices (and for
    a model of another kind) the model itself, under bf16 autocast where ``precision`` is "bf16" by name. Built once
    per set of weights. Its ``state_batch_dim``, where known, is the dimension of its state's tensors that holds the
    poems (``_write_batch`` drops the poems that have ended)."""
    from .models.gpt import GPT, GPTSteps
    from .models.lstm import LSTMSteps, StackedLSTM
    from .train import pick_precision

    arch = "lstm" if isinstance(model, StackedLSTM) else "gpt"
    dtype = torch.bfloat16 if pick_precision(precision, device.type, arch) == "bf16" else torch.float32
    if device.type != "cpu" or not isinstance(model, (StackedLSTM, GPT)):
        if precision == "bf16":  # asked for by name: autocast (auto keeps float32 where bf16 was not measured)
            step = functools.partial(_autocast_step, model, device.type)
            step.state_batch_dim = getattr(model, "state_batch_dim", None)
            return step
        return model
    versions = tuple(p._version for p in model.parameters())  # a model still training changes in place
    with _cpu_steps_lock:
        cached = _cpu_steps.get(model)
        if cached is None or cached[:2] != (versions, dtype):
            steps = LSTMSteps(model, dtype) if arch == "lstm" else GPTSteps(model, dtype)
            cached = _cpu_steps[model] = versions, dtype, steps
        return cached[2]


def batch_invariant(model, device: torch.device, precision: str = "auto") -> bool:
    """Whether a poem written in a batch is bit for bit the one written alone: checked for the packed steps on the
    CPU (``LSTMSteps``, ``GPTSteps``); a GPU's products may round a batch otherwise."""
    return getattr(writing_steps(model, device, precision), "batch_invariant", False)


def _autocast_step(model, device_type: str, x: torch.Tensor, state):
    with torch.autocast(device_type, dtype=torch.bfloat16):
        return model(x, state)


def training_words(texts: Iterable[str], vocab: Vocab) -> np.ndarray:
    """The words of ``texts`` as ids (``Vocab.same_word``'s), poems apart by -1; punctuation and breaks are
    skipped, as in the copying measures."""
    ids: list[int] = []
    for text in texts:
        ids += vocab.encode(t for t in tokenize(text, keep_case=vocab.keep_case, end=False) if is_word(t))
        ids.append(-1)
    same = np.array([*vocab.same_word, -1], dtype=np.int64)  # -1 stays -1
    return same[np.array(ids, dtype=np.int64)]


_MIX = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit multiplier (2^64 / the golden ratio)


def _run_keys(words: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """A 64-bit key for each run of ``length`` words starting at ``starts`` (a polynomial hash, wrapping)."""
    keys = np.zeros(len(starts), dtype=np.uint64)
    for k in range(length):
        keys = keys * _MIX + words[starts + k].astype(np.uint64)
    return keys


def _run_key(run: Sequence[int]) -> np.uint64:
    """``_run_keys`` of one run, in Python's integers: a numpy call per word cost 20 us a step for 11 words."""
    key = 0
    for word in run:
        key = (key * int(_MIX) + word) % 2**64
    return np.uint64(key)


class CopyGuard:
    """Blocks every word that would make a poem's last ``n`` words a run of words found in the training poems.

    Each run of ``n - 1`` training words is hashed to one 64-bit key, and the (key, following word) pairs are kept
    sorted: a step costs a binary search per poem, and a guard 12 bytes a training word (a dictionary of tuples
    took ~220, and 10 s to build at a million words). Two runs of words sharing a key (odds near 2^-64 a pair)
    would block more, never less.
    """

    def __init__(self, n: int, keys: np.ndarray, following: np.ndarray) -> None:
        self.n, self.keys, self.following = n, keys, following

    @classmethod
    def build(cls, texts: Iterable[str], vocab: Vocab, n: int) -> "CopyGuard":
        return cls.from_words(training_words(texts, vocab), n)

    @classmethod
    def from_words(cls, words: np.ndarray, n: int) -> "CopyGuard":
        """The guard of ``training_words``."""
        if n < 2:
            raise OptionError("max_copy", f"must be 0 (no guard) or at least 2 words, got {n}")
        if n > len(words):  # no run that long to block; hashing n - 1 words a run would loop n times for nothing
            return cls(n, np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int32))
        starts = np.arange(max(len(words) - n + 1, 0))
        poem_ends = np.concatenate([[0], np.cumsum(words < 0)])
        starts = starts[poem_ends[starts + n] == poem_ends[starts]]  # runs within one poem
        keys, following = _run_keys(words, starts, n - 1), words[starts + n - 1]
        order = np.lexsort((following, keys))
        keys, following = keys[order], following[order]
        new = np.ones(len(keys), dtype=bool)
        new[1:] = (keys[1:] != keys[:-1]) | (following[1:] != following[:-1])
        return cls(n, keys[new], following[new].astype(np.int32))

    def blocked(self, word_ids: list[int]) -> list[int]:
        """The words that may not come next after ``word_ids``."""
        if len(word_ids) < self.n - 1:
            return []
        key = _run_key(word_ids[len(word_ids) - self.n + 1 :])
        lo, hi = self.keys.searchsorted(key, "left"), self.keys.searchsorted(key, "right")
        return self.following[lo:hi].tolist()


class CopyGuards:
    """One run's copy guards, one per run length, each built on first use; the training poems are read then too,
    so a run shared without its data/ writes all the same, only without a guard. Its words are read once; the
    ``KEPT`` guards used last are kept (1.2 MB each for the six corpora)."""

    KEPT = 3

    def __init__(self, texts: Sequence[str] | Callable[[], Sequence[str]], vocab: Vocab) -> None:
        self._texts, self.vocab = texts, vocab
        self._words: np.ndarray | None = None
        self._built: dict[int, CopyGuard] = {}
        self._lock = threading.Lock()  # the web server writes from several threads

    def get(self, max_copy: int) -> CopyGuard | None:
        """The guard against runs of ``max_copy`` words (0: none)."""
        _check_type("max_copy", max_copy, numbers.Integral)
        if not max_copy:
            return None
        with self._lock:
            guard = self._built.pop(max_copy, None)
            if guard is None:
                if self._words is None:
                    texts = self._texts() if callable(self._texts) else self._texts
                    self._words = training_words(texts, self.vocab)
                guard = CopyGuard.from_words(self._words, max_copy)
            self._built[max_copy] = guard  # the newest last
            while len(self._built) > self.KEPT:
                del self._built[next(iter(self._built))]
            return guard


@dataclass
class _Draft:
    """One poem being written."""

    tokens: list[str] = field(default_factory=list)
    word_ids: list[int] = field(default_factory=list)  # its words so far, as Vocab.same_word (for the copy guard)
    words: int = 0
    lines: int = 0  # line and stanza breaks so far
    stanza_lines: int = 0  # breaks since the last stanza break
    line_tokens: int = 0  # tokens on the line being written (a break after none would leave an empty line)
    done: bool = False
    ended: bool = False

    def add(self, token: str, token_id: int, word: bool, max_words: int, max_lines: int) -> None:
        """One more token (not the poem's end); the poem is done once it has ``max_words`` words or
        ``max_lines`` lines (0: no limit), and the break that ends its last line is not written."""
        if token in (LINE, STANZA):
            self.lines += 1
            self.stanza_lines = 0 if token == STANZA else self.stanza_lines + 1
            self.line_tokens = 0
            if max_lines and self.lines >= max_lines:
                self.done = True
                return
        else:
            self.line_tokens += 1
            if word:
                self.words += 1
                self.word_ids.append(token_id)
        self.tokens.append(token)
        self.done = self.words >= max_words


@torch.no_grad()
def write_poems(
    model,
    vocab: Vocab,
    start: str | None = None,
    words: int = 120,
    n: int = 1,
    sampling: SamplingConfig | None = None,
    seed: int | Iterable[int] | None = None,
    lines: int = 0,
    form: str = "free",
    guard: CopyGuard | None = None,
    precision: str = "auto",
    stop: Callable[[], bool] | None = None,
) -> list[tuple[str, bool]]:
    """``n`` poems written at once (``WRITE_BATCH`` at a time, fewer for a big vocabulary) from ``start`` (none:
    ``default_start``): (poem text, whether it ended by itself).

    Poem ``i`` draws from seed ``seed + i`` (or ``seed[i]`` for a list; none: a random seed). A poem stops at
    ``<poembreak>``, after ``words`` words or after ``lines`` lines (0: no limit); ``form`` sets the lines per
    stanza; ``guard`` blocks every word that would copy a run of words from the training poems; ``precision``
    chooses the arithmetic (``writing_steps``). ``stop`` is asked before each token: True raises ``Stopped`` (a
    server's client has gone).
    """
    sampling = sampling or SamplingConfig()
    sampling.check()
    for name, value in (("words", words), ("n", n), ("lines", lines)):
        _check_type(name, value, numbers.Integral)
    for name, value, least in (("words", words, 1), ("n", n, 1), ("lines", lines, 0)):
        if value < least:
            raise OptionError(name, f"must be {least} or more, got {value}")
    if start is not None and not isinstance(start, str):
        raise NeuraldaError(f"start must be text, got {start!r}")
    if not isinstance(form, str) or form not in FORMS:  # a list is no key of FORMS: a TypeError otherwise
        raise NeuraldaError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    seeds = poem_seeds(seed, n)
    prime = start_tokens(default_start(vocab) if start is None else start, vocab)
    size = max(1, min(WRITE_BATCH, WRITE_SCORES // len(vocab)))
    batches = (seeds[i : i + size] for i in range(0, n, size))
    return [
        poem
        for batch in batches
        for poem in _write_batch(
            model, vocab, prime, words, batch, sampling, lines, FORMS[form], guard, precision, stop
        )
    ]


def _write_batch(
    model,
    vocab: Vocab,
    prime: list[str],
    words: int,
    seeds: Sequence[int],
    sampling: SamplingConfig,
    lines: int,
    per_stanza: int,
    guard: CopyGuard | None,
    precision: str,
    stop: Callable[[], bool] | None,
) -> list[tuple[str, bool]]:
    """The poems of ``seeds`` written at once from the start tokens ``prime`` (see ``write_poems``)."""
    n = len(seeds)
    generators = poem_generators(seeds, n)
    device = next(model.parameters()).device
    model.eval()
    word_mask, same_word, spellings = vocab.word_mask, vocab.same_word, vocab.spellings
    prime_ids = vocab.encode(prime)
    drafts = [_Draft() for _ in range(n)]
    for d in drafts:  # the start is kept whole; its words and lines count towards the limits
        for token, token_id in zip(prime, prime_ids):
            d.add(token, same_word[token_id], word_mask[token_id], words, 0)
        d.done = d.words >= words or 0 < lines <= d.lines

    def spelled(token_id: int) -> list[int]:  # a word's ids: " 蛙" is "蛙" to the penalty, as to the copy guard
        return spellings.get(same_word[token_id], [token_id]) if word_mask[token_id] else []

    seen = None  # the words each poem has written, in each of their spellings, where the repetition penalty reads them
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros(n, len(vocab), dtype=torch.bool, device=device)
        seen[:, [j for i in prime_ids for j in spelled(i)]] = True
    stanza, line, end = vocab.stoi[STANZA], vocab.stoi[LINE], vocab.stoi[POEM_END]
    step = writing_steps(model, device, precision)
    batch_dim = getattr(step, "state_batch_dim", None)  # where its state keeps each poem (none: unknown)
    # The scores stay where the model made them and are drawn from there; what each poem may not write next is
    # set to -inf in a copy of them in one indexed write a step (0.07-0.08 ms for 32 rows of 5,437 words here,
    # against 0.08-0.11 adding a tensor of -inf made on the CPU, and 0.19 for masked_fill).
    state = None
    for token_id in vocab.encode([POEM_END] + prime):  # read the start one token at a time, as it is written
        logits, state = step(torch.full((n, 1), token_id, device=device), state)
    live = list(range(n))  # the poems of the batch's rows
    for _ in range(4 * words + 50):  # punctuation and breaks are not words: bound the steps too
        if stop is not None and stop():
            raise Stopped
        rows, cols = list(range(len(live))), [vocab.unk] * len(live)  # <unk> never; the rest each poem's own
        for r, i in enumerate(live):
            d = drafts[i]
            banned = guard.blocked(d.word_ids) if guard is not None else []
            if spellings and banned:  # the guard blocks a word in each of its spellings
                banned = [j for word in banned for j in spellings.get(word, (word,))]
            if not d.line_tokens:  # no empty lines: poems in a corpus have none
                banned = [*banned, line, stanza]
            elif per_stanza:  # a stanza break only after the form's lines, and a line break never then
                banned = [*banned, line if d.stanza_lines + 1 >= per_stanza else stanza]
            if (per_stanza and 0 < d.stanza_lines + (d.line_tokens > 0) < per_stanza) or not d.tokens:
                banned = [*banned, end]  # the poem ends with a whole stanza, and is never empty
            rows += [r] * len(banned)
            cols += banned
        scores = logits[:, -1].to(torch.float32, copy=True)  # a model may hand out a tensor it keeps
        hidden = scores[rows, cols]  # a NaN or +inf stays, for sample_next to refuse: the model's scores are broken
        scores[rows, cols] = torch.where(hidden.isnan() | (hidden == torch.inf), hidden, -torch.inf)
        drawing = [generators[i] for i in live]
        try:
            nxt = sample_next(filter_logits(scores, sampling, seen), drawing, sampling.top_p, sampling.temperature).cpu()
        except NoDistribution:
            raw = logits[:, -1].float()
            if not bool((raw.isnan() | (raw == torch.inf)).any()) and bool((raw > -torch.inf).any(-1).all()):
                raise NoDistribution(  # the scores were sound: what the settings ban left nothing
                    "the writing settings left no word to write (the copy guard, the form, no empty lines): try a "
                    "longer --max-copy or another --form"
                ) from None
            raise
        rows, cols = [], []
        for r, (i, token_id) in enumerate(zip(live, nxt.tolist())):
            d = drafts[i]
            if d.done:
                continue
            if token_id == end:
                d.done = d.ended = True
                continue
            d.add(vocab.itos[token_id], same_word[token_id], word_mask[token_id], words, lines)
            if seen is not None:
                ids = spelled(token_id)
                rows += [r] * len(ids)
                cols += ids
        if seen is not None:
            seen[rows, cols] = True
        kept = [r for r, i in enumerate(live) if not drafts[i].done]
        if not kept:
            break
        if len(kept) < len(live) and (state is None or batch_dim is not None):
            # A poem that has ended leaves the batch: poems end at their own lengths (from 4 to 199 words in
            # 32 by our lstm), and the rest then run with fewer rows.
            index = torch.tensor(kept, device=device)
            state = None if state is None else [tuple(t.index_select(batch_dim, index) for t in s) for s in state]
            nxt, live = nxt[kept], [live[r] for r in kept]
            seen = None if seen is None else seen[index]
        logits, state = step(nxt.unsqueeze(1).to(device), state)
    return [(detokenize(d.tokens), d.ended) for d in drafts]


class Poet:
    """A trained poet: ``Poet.load("runs/NAME").write(start="love", words=100, temperature=0.9, seed=1)``."""

    def __init__(
        self,
        model,
        vocab: Vocab,
        name: str = "",
        training_texts: Sequence[str] | Callable[[], Sequence[str]] = (),
        precision: str = "auto",
        epoch: int | None = None,
    ) -> None:
        """``training_texts``: the poems the copy guard reads, or what reads them when it is first needed; ``epoch``:
        the epochs its weights were trained for (0: untrained), where known."""
        self.model, self.vocab, self.name, self.precision, self.epoch = model, vocab, name, precision, epoch
        self.guards = CopyGuards(training_texts, vocab)

    @classmethod
    def load(
        cls, run_dir: str | Path, checkpoint: str = "best", device: str = "cpu", precision: str = "auto"
    ) -> "Poet":
        """The model of ``checkpoint`` (best, last or epoch-N) of a run directory, on ``device`` (cpu, auto, cuda,
        mps); ``precision`` (auto, fp32, bf16) as in ``writing_steps``. Warns (``NeuraldaWarning``) when the weights
        are untrained: a run killed before its first epoch keeps a ``last`` of epoch 0, whose poems are word salad."""
        from .run import Run
        from .train import pick_device, pick_precision

        if not isinstance(run_dir, (str, os.PathLike)):
            raise NeuraldaError(f"run_dir must be a path, got {run_dir!r}")
        for name, value in (("checkpoint", checkpoint), ("device", device), ("precision", precision)):
            if not isinstance(value, str):
                raise NeuraldaError(f"{name} must be text, got {value!r}")
        device = pick_device(device)
        run = Run.open(run_dir)
        pick_precision(precision, device, run.config["arch"])  # a wrong one is an error now, not at the first poem
        model, meta = run.load_model(checkpoint, device=device)
        if meta.get("epoch") == 0:
            warnings.warn(f"checkpoint {checkpoint!r} holds epoch 0: untrained weights", NeuraldaWarning, stacklevel=2)
        return cls(
            model, run.vocab, f"{run.name}:{checkpoint}", run.training_texts, precision=precision,
            epoch=meta.get("epoch"),
        )

    def __repr__(self) -> str:
        return f"Poet({self.name or 'unnamed'!r}, epoch={self.epoch}, vocabulary={len(self.vocab):,} tokens)"

    def write_many(
        self,
        n: int,
        start: str | None = None,
        words: int = 120,
        seed: int | Iterable[int] | None = None,
        *,
        temperature: float = SamplingConfig.temperature,
        top_k: int = SamplingConfig.top_k,
        top_p: float = SamplingConfig.top_p,
        repetition_penalty: float = SamplingConfig.repetition_penalty,
        lines: int = 0,
        form: str = "free",
        max_copy: int = 0,
    ) -> list[str]:
        """``n`` poems written in one batched pass; poem ``i`` is the one ``write`` gives with ``seed + i`` (or
        ``seed[i]`` for a list; none: a random seed), bit for bit where the model is ``batch_invariant`` (on the
        CPU): a GPU's batch may round a rare word otherwise, and the poem goes on from it.

        ``start``: the first words (none: "love" where the model knows it, else anywhere); ``words``: at most that
        many; ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``: how each word is drawn
        (``SamplingConfig``); ``lines``: at most that many (0: any); ``form``: free, couplet, tercet or quatrain;
        ``max_copy``: no run of that many words is copied from the training poems (0: no guard).
        """
        sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty)
        poems = write_poems(
            self.model, self.vocab, start, words, n, sampling, seed, lines, form, self.guards.get(max_copy),
            self.precision,
        )
        return [p for p, _ in poems]

    def write(self, start: str | None = None, words: int = 120, seed: int | None = None, **options) -> str:
        """One poem, as a string; ``options``: temperature, top_k, top_p, repetition_penalty, lines, form, max_copy,
        as for ``write_many``."""
        return self.write_many(1, start, words, seed, **options)[0]
