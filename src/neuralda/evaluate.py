"""Measures: how well a model predicts held-out poems, and how much the poems it writes copy and repeat.

Held-out text gives perplexity per token and per word, bits per character and the share of unknown tokens; a batch
of written poems gives the share of their 4-, 6- and 8-word runs found verbatim in the training poems, the longest
copied run, distinct-1 and distinct-2, and how many poems ended by themselves. ``evaluate_run`` measures one
checkpoint of a run; ``compare_rows`` and ``format_compare`` set several side by side.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import numbers
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .corpus import Poem, copy_key, read_corpus
from .errors import NeuraldaError, OptionError, listed
from .generate import SamplingConfig, default_start, start_tokens, write_poems
from .run import Run, printable
from .tokenizer import POEM_END, Vocab, detokenize, is_word, tokenize

EVAL_STREAMS = 16  # held-out text is read as 16 parallel streams on a CPU, the state carried along each
GPU_EVAL_STREAMS = 128  # and as up to 128 on a GPU (see token_nll)
EVAL_CHUNK = 128
EVAL_LOGITS = 1 << 24  # scores one chunk may hold on a CPU (64 MB of float32; cross-entropy makes two more): a big
# vocabulary is read in shorter chunks (16 x 128 x 28,500 words took evaluate to 692 MB)
GPU_EVAL_LOGITS = 1 << 26  # on a GPU (256 MB): 128 streams over the seed's 9,571 words read 54 steps a chunk
EVAL_WARMUP = 128  # tokens each stream reads before the ones it scores
LOSS_CHUNK = 4096  # rows of logits alive at once in the loss on a GPU, where each chunk costs a dozen launches
CPU_LOSS_CHUNK = 2**22  # logits alive at once in the loss on a CPU: 16 MB of float32, half of our CPUs' L3
COPY_LENGTHS = (4, 6, 8)  # word runs checked against the training poems
_SEPARATOR = -1  # between poems in the n-gram index: no word run crosses it


def autocast(device: str, precision: str):
    """The autocast context for ``precision`` ("bf16", or "fp32" and "tf32": none) on ``device``."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _full_float32(precision: str, device: torch.device):
    """float32 products without TF32 (10-bit mantissas), which training turns on for speed on a GPU: ``evaluate``'s
    measure. Training scores its held-out text with ``precision`` "tf32": float32 with its own flags, TF32 on a GPU,
    for speed (the seed's perplexity 2e-6 above full float32's on an H200: 734.01614 against 734.01457). The flags are
    left alone elsewhere (reading them raises where a program set TF32 through torch's newer fp32_precision)."""
    if precision != "fp32" or device.type != "cuda":
        yield
        return
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def loss_chunk(vocab_size: int, device: torch.device) -> int:
    """Rows of logits the loss (training's, and token_nll's) holds at once. On a CPU as many as fit in cache: for the
    seed's model at 512 x 30 and V = 9,571, 438 rows trained 7-11% faster than 4,096 and peaked at 1.25-1.29 GB
    instead of 1.57-1.65; scoring held-out text so took 0.47 s instead of 0.73-0.77 (our lstm, 10,016 tokens)."""
    return max(1, CPU_LOSS_CHUNK // vocab_size) if device.type == "cpu" else LOSS_CHUNK


def token_nll(
    model, ids: torch.Tensor, precision: str = "fp32", share: tuple[int, int] = (0, 1)
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of ``ids[1:]`` given what precedes them, and how many were scored (all;
    with ``share`` = (rank, processes), those of every processes-th stream from rank: summed over the processes of a
    torchrun job, they are the whole text's). See `HeldoutScorer`, which scores one text again and again."""
    return HeldoutScorer(model, ids, precision, share)()


class HeldoutScorer:
    """Scores held-out text (`token_nll`), laid out once to be scored after every epoch of a run.

    The text is cut into up to ``EVAL_STREAMS`` parallel streams read in chunks with the recurrent state carried, so
    every model is measured the same way, as training reads the corpus: one long context across poems, not windows.
    (A poem is written from a fresh state: each poem scored from a fresh state gave a 3-5% higher perplexity for small
    LSTMs on the demo, 0.05% for the transformer.) Each stream first reads, unscored, the ``EVAL_WARMUP`` tokens
    before its part: a state starting from zeros mid-text cost a small held-out set 5% of its
    perplexity against reading it as one stream; after the warm-up it is 0.04-0.06% above (Keats 98.970 against
    98.930, the demo model 68.031 against 67.989: an LSTM remembers further back than 128 tokens; 512 would bring it
    within 0.005%, at 1.2-2x the validation time).
    A CPU's time goes with the tokens read, warm-ups included, so it reads few streams; a GPU's goes with the steps
    read one after another, so it reads more, each shorter: on an H200 the seed's validation of 10,016 tokens took
    43 ms of each 141 ms epoch as 16 streams of 880 steps, 22 ms as 78 streams of 257 steps.
    What the stream starts cost depends on where they fall: a stream that starts more than the warm-up into a long
    poem never reads its opening. Our lstm trained on the six corpora (10,015 held-out tokens, poems of 113 tokens
    at the median and up to 838) measured 128.251 as one stream, 128.312 as 16 streams (+0.05%), 128.634 as 78
    (+0.25%: 11 of them start over 128 tokens into a poem), 128.259 as 16 with a 256-token warm-up and 128.306 as
    128 with it (on a GPU 30% more steps than 78 with 128); a less trained lstm scored 0.07% lower as 78 than as 16.
    Streams are padded at their ends; padding is never scored.

    With ``graph`` on a GPU the pass is captured as one CUDA graph after its first run and replayed from then on (the
    optimizer updates the weights in place): its 1,600 kernels are launched at once, not one by one from Python. The
    seed's validation so took 19.8 ms in full float32 (the 771 products of 257 steps x 3 layers, 11.3 ms of it, run
    one after another in float32), 9.0 ms with TF32 (training's precision, "tf32"); our lstm's 8.3 ms against 15.4,
    5.4 with TF32.
    """

    def __init__(
        self, model, ids: torch.Tensor, precision: str = "fp32", share: tuple[int, int] = (0, 1), graph: bool = False
    ) -> None:
        self.model, self.precision = model, precision
        self.device = device = next(model.parameters()).device
        self.graph: tuple[torch.cuda.CUDAGraph, torch.Tensor] | None = None  # the captured pass and its sums
        self.capture = graph and device.type == "cuda" and precision != "bf16"  # autocast's cache is no graph's
        n = ids.numel() - 1
        on_cpu = device.type == "cpu"
        streams = max(1, min(EVAL_STREAMS if on_cpu else GPU_EVAL_STREAMS, n // EVAL_CHUNK))
        step = -(-n // streams) if n > 0 else 1
        parts = [(max(0, a - EVAL_WARMUP), a, min(a + step, n)) for a in range(0, n, step)]  # read from, scored, to
        parts = parts[share[0] :: share[1]]
        self.count, self.chunks = 0, []
        if not parts:
            return
        length = max(end - read for read, _, end in parts)
        self.chunk = max(
            8, min(EVAL_CHUNK, (EVAL_LOGITS if on_cpu else GPU_EVAL_LOGITS) // (len(parts) * model.vocab_size))
        )
        self.block = loss_chunk(model.vocab_size, device)
        # Where each row reads, built on the host (a copy a row to the device was 256 launches a validation on a
        # GPU); only the positions scored go through the output layer (not the warm-ups, not the padding),
        # loss_chunk rows at a time: on a CPU 67 MB of logits a chunk, out of cache, spent more time in the bias copy
        # and log-softmax than in the product.
        read, start, end = (torch.tensor(column).unsqueeze(1) for column in zip(*parts))
        at = read + torch.arange(length)  # the position each row reads at each step
        scoring = (at >= start) & (at < end)
        self.count = int(scoring.sum())
        on_ids = at.to(ids.device)
        self.x = torch.where((at < end).to(ids.device), ids[on_ids.clamp(max=n)], 0).to(device, non_blocking=True)
        y = ids[(on_ids + 1).clamp(max=n)].to(device, non_blocking=True)  # the next token at each position
        for i in range(0, length, self.chunk):
            keep = scoring[:, i : i + self.chunk].flatten().nonzero().squeeze(1)
            keep = keep.to(device, non_blocking=True) if keep.numel() else None
            targets = None if keep is None else y[:, i : i + self.chunk].flatten().index_select(0, keep)
            self.chunks.append((i, keep, targets))

    def _sums(self) -> torch.Tensor:
        """One pass: the summed NLL of each block of scored rows, on the device."""
        sums, state = [], None
        with autocast(str(self.device), self.precision), _full_float32(self.precision, self.device):
            for i, keep, targets in self.chunks:
                h, state = self.model.features(self.x[:, i : i + self.chunk], state)
                if keep is None:
                    continue
                rows = h.flatten(0, 1).index_select(0, keep)
                for j in range(0, len(rows), self.block):
                    logits = self.model.decoder(rows[j : j + self.block])
                    sums.append(F.cross_entropy(logits.float(), targets[j : j + self.block], reduction="sum"))
        return torch.stack(sums)

    @torch.no_grad()
    def __call__(self) -> tuple[float, int]:
        if not self.count:
            return 0.0, 0
        was_training = self.model.training
        self.model.eval()
        try:
            if self.graph is not None:
                self.graph[0].replay()
                sums = self.graph[1]
            else:
                sums = self._sums()
                if self.capture:  # after a first pass has set up cuDNN and cuBLAS for these shapes
                    self.capture = False
                    self.graph = self._capture()
        finally:
            self.model.train(was_training)
        return float(sums.cpu().double().sum()), self.count  # float64 on the CPU: MPS has none

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        """The pass captured as a CUDA graph with the tensor its replays write the sums to, or None where it cannot
        be (a GPU backend whose recurrent kernels a graph cannot hold, say): then every pass runs as the first did."""
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                sums = self._sums()
        except RuntimeError:
            return None
        return graph, sums


def format_ppl(value: float) -> str:
    """A perplexity to read: one decimal, or four digits and a power of ten past a million (a run that diverged
    reached 10^111, 112 digits in the log and the tables)."""
    return f"{value:.1f}" if value < 1e6 else f"{value:.4g}"


def perplexity(nll: float, count: int) -> float:
    """exp(mean NLL), or inf when nothing was scored or it overflows."""
    if count == 0:
        return math.inf
    mean = nll / count
    return math.exp(mean) if mean < 700 else math.inf


# --- held-out poems -----------------------------------------------------------------------------------------------


@dataclass
class HeldoutText:
    """Held-out poems as the model reads them, with what the per-word and per-character measures divide by."""

    ids: torch.Tensor  # a poem break, then each poem and its break, as in training
    words: int
    chars: int  # of the poems written back from their tokens, plus one for each poem's end
    unknown: int  # tokens the vocabulary maps to <unk>


def heldout_text(poems: Iterable[Poem], vocab: Vocab) -> HeldoutText:
    """Tokenise ``poems`` with the run's vocabulary and count their words, characters and unknown tokens."""
    token_lists = [tokenize(p.text, keep_case=vocab.keep_case) for p in poems]
    ids = [vocab.stoi[POEM_END]] + [i for tokens in token_lists for i in vocab.encode(tokens)]
    return HeldoutText(
        ids=torch.tensor(ids, dtype=torch.long),
        words=sum(is_word(t) for tokens in token_lists for t in tokens),
        chars=sum(len(detokenize(tokens)) + 1 for tokens in token_lists),
        unknown=sum(i == vocab.unk for i in ids[1:]),
    )


def heldout_measures(model, text: HeldoutText, precision: str = "fp32") -> dict:
    """Perplexity per token and per word (the same total NLL over words), bits per character, OOV rate; scored in
    ``precision`` (fp32, or bf16 autocast)."""
    nll, count = token_nll(model, text.ids, precision)
    return {
        "precision": precision,
        "perplexity": perplexity(nll, count),
        "perplexity_per_word": perplexity(nll, text.words) if text.words else None,  # no words: undefined
        "bits_per_char": nll / math.log(2) / text.chars,
        "oov_rate": text.unknown / count,
        "tokens": count,
    }


# --- written poems ------------------------------------------------------------------------------------------------


def poem_words(text: str, keep_case: bool = False) -> list[str]:
    """The words of a poem, without punctuation or breaks; a Chinese or Japanese character is the same word whether
    or not the poet put a space beside it (its token keeps that space: " 蛙")."""
    return [t.strip(" ") for t in tokenize(text, keep_case=keep_case, end=False) if is_word(t)]


def ngrams(words: Sequence[str], n: int, given: int = 0) -> list[tuple[str, ...]]:
    """Every run of ``n`` consecutive words; with ``given``, only those that reach past the first ``given`` words
    (the start a writer was given: its words are not the model's)."""
    return [tuple(words[i : i + n]) for i in range(max(0, given - n + 1), len(words) - n + 1)]


def suffix_array(text: np.ndarray) -> np.ndarray:
    """Start positions of the suffixes of ``text`` in sorted order, by prefix doubling (Manber & Myers 1993)."""
    n = len(text)
    rank = np.unique(text, return_inverse=True)[1].astype(np.int64)
    order = np.argsort(rank, kind="stable")
    width = 1
    while width < n:
        after = np.zeros(n, dtype=np.int64)  # past the end sorts first, as a shorter tuple does
        after[: n - width] = rank[width:] + 1
        key = rank * (n + 1) + after  # (rank, after) as one number: one argsort, not a lexsort of two (2x faster)
        order = np.argsort(key)
        sorted_keys = key[order]
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.cumsum(np.concatenate(([0], sorted_keys[1:] != sorted_keys[:-1])))
        if rank[order[-1]] == n - 1:
            break
        width *= 2
    return order


class NgramIndex:
    """Every run of words in the training poems: was a run copied, and how long is the longest copy?

    A suffix array over the poems' words finds a run of ``m`` words by binary search, whatever its length.
    """

    def __init__(self, poems: Iterable[Sequence[str]]) -> None:
        self._ids: dict[str, int] = {}
        text: list[int] = []
        for words in poems:
            text.extend(self._ids.setdefault(w, len(self._ids)) for w in words)
            text.append(_SEPARATOR)
        self._text = text
        self._suffixes: list[int] = suffix_array(np.array(text, dtype=np.int64)).tolist()

    @classmethod
    def from_poems(cls, poems: Iterable[Poem], keep_case: bool = False) -> "NgramIndex":
        return cls(poem_words(p.text, keep_case) for p in poems)

    def _span(self, words: Sequence[str]) -> range:
        """Where the suffixes that start with ``words`` lie in the suffix array."""
        if any(w not in self._ids for w in words):
            return range(0)
        query = tuple(self._ids[w] for w in words)
        m = len(query)

        def prefix(start: int) -> tuple[int, ...]:
            return tuple(self._text[start : start + m])

        lo = bisect_left(self._suffixes, query, key=prefix)
        return range(lo, bisect_right(self._suffixes, query, lo=lo, key=prefix))

    def contains(self, words: Sequence[str]) -> bool:
        """Whether ``words`` occur in this order, one after another, in one training poem."""
        return len(self._span(words)) > 0

    def longest_copy(self, words: Sequence[str], given: int = 0) -> int:
        """The length of the longest run of ``words`` found verbatim in the training poems, among the runs that reach
        past the first ``given`` words (see ``ngrams``): a copied start followed by a new word counts for nothing."""
        best = 0
        for i in range(len(words)):
            length = max(best, given - i) + 1  # longer than the best so far, and past the start
            while i + length <= len(words) and self.contains(words[i : i + length]):
                best, length = length, length + 1
        return best


def copied_share(poems: Sequence[Sequence[str]], index: NgramIndex, n: int, given: int = 0) -> float | None:
    """The share of the poems' ``n``-word runs (past ``given``: see ``ngrams``) found in the training poems (None
    when no poem has such a run)."""
    grams = [g for words in poems for g in ngrams(words, n, given)]
    return sum(map(index.contains, grams)) / len(grams) if grams else None


def distinct_n(poems: Sequence[Sequence[str]], n: int, given: int = 0) -> float | None:
    """Distinct ``n``-word runs over all of them, pooled over the poems; None when there are none. This is the common
    ratio form of Li et al. 2016's distinct-n, who divide by the number of words instead (n - 1 more per poem).
    ``given``: see ``ngrams``."""
    grams = [g for words in poems for g in ngrams(words, n, given)]
    return len(set(grams)) / len(grams) if grams else None


def sample_measures(
    poems: Sequence[tuple[str, bool]], index: NgramIndex, keep_case: bool = False, given: int = 0
) -> dict:
    """Copying and diversity of written poems, as ``write_poems`` returns them: (text, ended by itself), each
    beginning with the ``given`` words of its start, which count only in runs that reach past them (a start copied
    from a training poem is the user's copy, not the model's); a measure with nothing to measure (no poems, or none
    long enough) is None, shown as "-", not as a misleading 0."""
    words = [poem_words(text, keep_case) for text, _ in poems]
    row: dict = {f"copied_{n}gram_share": copied_share(words, index, n, given) for n in COPY_LENGTHS}
    row["longest_copy"] = max((index.longest_copy(w, given) for w in words if len(w) > given), default=None)
    row["distinct_1"] = distinct_n(words, 1, given)
    row["distinct_2"] = distinct_n(words, 2, given)
    row["ended_share"] = sum(ended for _, ended in poems) / len(poems) if poems else None
    row["samples"] = len(poems)
    row["words_per_poem"] = sum(map(len, words)) / len(words) if words else None  # distinct-n falls as poems grow
    return row


# --- runs ---------------------------------------------------------------------------------------------------------


def measure_checkpoints(
    run_dir: str | Path,
    checkpoints: Sequence[str],
    corpus: str | Path | None = None,
    samples: int = 20,
    start: str | None = None,
    words: int = 120,
    seed: int = 0,
    sampling: SamplingConfig | None = None,
    device: str = "cpu",
) -> Iterator[tuple[dict, torch.nn.Module, dict]]:
    """``evaluate_run``'s row of each checkpoint of one run, with the checkpoint's model and meta; the held-out
    text and the index of the training poems are made once for all (at a million tokens: 5 s a checkpoint)."""
    from .train import pick_device

    device = pick_device(device)  # "gpu": one line naming the choices, not torch's list of its device types
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 0:  # not "--n"
        raise OptionError("samples", f"must be 0 or more, got {samples!r}")
    run = Run.open(run_dir)
    sampling = sampling or SamplingConfig()
    text, index, given = None, None, 0
    training = functools.cache(lambda: run.poems("train"))  # read once, for the share and for the copy index
    for checkpoint in listed(checkpoints, "checkpoints"):
        model, meta = run.load_model(checkpoint, device=device)
        if text is None:
            heldout = run.poems("val") if corpus is None else read_corpus(corpus)  # --corpus '': no file, an error
            if not heldout:
                raise NeuraldaError(
                    f"{run.path}: no held-out poems (trained with --val-fraction 0); pass --corpus FILE"
                )
            text = heldout_text(heldout, run.vocab)
            # Which poems were scored: runs split with another --seed or from another corpus hold out others.
            heldout_id = hashlib.sha256("\0".join(p.text for p in heldout).encode("utf-8", "surrogatepass")).hexdigest()
            trained_on = 0.0 if corpus is None else _trained_share(heldout, training)
            if samples:  # the start's words, which every poem opens with (checked as write_poems checks it)
                given = sum(map(is_word, start_tokens(default_start(run.vocab) if start is None else start, run.vocab)))
        # Names as a terminal can print them: a byte that is not UTF-8 made printing the row a traceback.
        row = {"run": printable(str(run_dir)), "checkpoint": checkpoint, "epoch": meta.get("epoch")}
        row["corpus"] = "val" if corpus is None else printable(str(corpus))
        row["heldout_poems"] = heldout_id[:12]
        row["poems_trained_on"] = trained_on
        # What the perplexity is of: a vocabulary that reads more words as <unk> makes an easier task.
        row["vocab_size"], row["min_count"], row["keep_case"] = len(run.vocab), run.vocab.min_count, run.vocab.keep_case
        # As training scored it (a run trained in bf16 on a CPU validated in bf16; older checkpoints say nothing):
        # the same number as the run's metrics and plot. Not an LSTM on CUDA, where autocast runs cuDNN's LSTM in
        # float16 (see train.pick_precision).
        precision = "bf16" if meta.get("val_precision") == "bf16" else "fp32"
        if precision == "bf16" and torch.device(device).type == "cuda" and run.config["arch"] != "gpt":
            precision = "fp32"
        row.update(heldout_measures(model, text, precision))
        poems = write_poems(model, run.vocab, start, words, samples, sampling, seed) if samples else []
        if index is None:  # read only when there are poems to check: a run shared without data/ can be measured
            index = NgramIndex.from_poems(training() if poems else [], run.vocab.keep_case)
        row.update(sample_measures(poems, index, run.vocab.keep_case, given))
        row["temperature"], row["top_p"] = sampling.temperature, sampling.top_p  # copying and diversity depend on them
        yield row, model, meta


def _trained_share(poems: Sequence[Poem], training: Callable[[], list[Poem]]) -> float | None:
    """The share of ``poems`` that are the ``training`` poems (or copies of them); None for a run shared without
    them."""
    try:
        trained = {copy_key(p.text) for p in training()}
    except NeuraldaError:
        return None
    return round(sum(copy_key(p.text) in trained for p in poems) / len(poems), 4)


def evaluate_run(run_dir: str | Path, checkpoint: str = "best", **options) -> dict:
    """Every measure of one checkpoint, as one flat dict: held-out poems (the run's own, or ``corpus`` read with
    the run's vocabulary), then ``samples`` poems written from ``start`` with ``seed`` (0: none); ``options`` as
    for ``measure_checkpoints``."""
    row, _, _ = next(measure_checkpoints(run_dir, [checkpoint], **options))
    return row


def parse_spec(spec: str) -> tuple[str, str]:
    """``RUN[:CHECKPOINT]`` as (run, checkpoint); the checkpoint is "best" when not given."""
    run, sep, checkpoint = spec.rpartition(":")
    if not sep or not run or Path(spec).is_dir():
        return spec, "best"
    return run, checkpoint


def compare_rows(specs: Sequence[str], **options) -> list[dict]:
    """``evaluate_run`` of each ``RUN[:CHECKPOINT]`` spec, in order; ``options`` go to every call. The checkpoints
    of one run are measured together (``measure_checkpoints``)."""
    by_run: dict[str, list[tuple[int, str]]] = {}  # a run's checkpoints and where their rows go
    for i, spec in enumerate(specs):
        run, checkpoint = parse_spec(spec)
        by_run.setdefault(run, []).append((i, checkpoint))
    rows: list[dict] = [{}] * len(specs)
    for run, wanted in by_run.items():  # one run at a time: its models and index are let go before the next
        measured = measure_checkpoints(run, [checkpoint for _, checkpoint in wanted], **options)
        for (i, _), (row, _, _) in zip(wanted, measured):
            rows[i] = row
    return rows


def comparability_notes(rows: Sequence[dict]) -> list[str]:
    """Why the perplexities of ``rows`` (of ``measure_checkpoints``) are not comparable, as sentences; none when
    they are (or a row does not say)."""

    def vocabulary(size: int, min_count: int, keep_case: bool) -> str:
        return f"{size:,} tokens" + (f" at --min-count {min_count}" if min_count != 1 else "") + (
            " with --keep-case" if keep_case else "")

    notes = []
    vocabularies = dict.fromkeys((r.get("vocab_size"), r.get("min_count"), r.get("keep_case")) for r in rows)
    if len(vocabularies) > 1:
        notes.append(
            f"the runs' vocabularies differ ({'; '.join(vocabulary(*v) for v in vocabularies)}): a run that reads more "
            "words as <unk> has an easier task and a lower perplexity (see the OOV rate); compare runs with the same "
            "vocabulary"
        )
    if len({r.get("heldout_poems") for r in rows}) > 1:
        notes.append(
            "the runs are scored on different held-out poems (each on its own split: another --seed or corpus); pass "
            "--corpus FILE to score them all on the same poems"
        )
    trained = {r["run"]: r["poems_trained_on"] for r in rows if r.get("poems_trained_on")}
    if trained:
        notes.append(
            f"{'; '.join(f'{run} trained on {_share(share)}' for run, share in trained.items())} of the poems "
            "scored: perplexity there says how well a run remembers its poems, not how it does on poems it never read"
        )
    unknown = dict.fromkeys(r["run"] for r in rows if "poems_trained_on" in r and r["poems_trained_on"] is None)
    if unknown:
        notes.append(f"whether {' or '.join(unknown)} trained on the poems scored is unknown (no data/train.jsonl)")
    return notes


def _share(share: float) -> str:
    """A share as a percentage that never rounds to 0% or 100% unless it is."""
    return f"{share:.0%}" if share in (0, 1) or 0.005 <= share < 0.995 else "under 1%" if share < 0.5 else "over 99%"


_COLUMNS = (  # header, key, how the value is written
    ("epoch", "epoch", "{}".format),
    ("ppl", "perplexity", format_ppl),
    ("ppl/word", "perplexity_per_word", format_ppl),
    ("bits/char", "bits_per_char", "{:.3f}".format),
    ("oov", "oov_rate", "{:.1%}".format),
    ("copy4", "copied_4gram_share", "{:.1%}".format),
    ("copy6", "copied_6gram_share", "{:.1%}".format),
    ("copy8", "copied_8gram_share", "{:.1%}".format),
    ("longest", "longest_copy", "{}".format),
    ("distinct1", "distinct_1", "{:.3f}".format),
    ("distinct2", "distinct_2", "{:.3f}".format),
    ("ended", "ended_share", "{:.0%}".format),
)


def format_compare(rows: Sequence[dict]) -> str:
    """An aligned plain-text table, one line per run or checkpoint, and the ``comparability_notes``."""
    table = [["run"] + [header for header, _, _ in _COLUMNS]]
    for row in rows:
        cells = [f"{row['run']}:{row['checkpoint']}"]
        cells += ["-" if row.get(key) is None else write(row[key]) for _, key, write in _COLUMNS]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [
        "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip() for r in table
    ]
    return "\n".join(lines + [f"note: {note}" for note in comparability_notes(rows)])
