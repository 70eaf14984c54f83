"""Writing speed: ms per word for one poem (carrying the state against re-running the growing text, as the seed
did), and words/s for many poems written in one batched pass against writing them one by one.

    python bench/generate_speed.py [--arch seed] [--vocab 5437] [--words 200] [--n 32] [--device D] [--run RUN]
                                   [--precision auto|fp32|bf16] [--rounds 3]

Without ``--run`` the model has the seed's sizes and random weights: speed does not depend on what it learned.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, report  # noqa: E402

from neuralda.evaluate import autocast  # noqa: E402
from neuralda.generate import start_tokens, write_poems, writing_steps  # noqa: E402
from neuralda.models import build_model, default_size  # noqa: E402
from neuralda.run import Run  # noqa: E402
from neuralda.tokenizer import POEM_END, SPECIALS, Vocab, is_word, tokenize  # noqa: E402
from neuralda.train import pick_device  # noqa: E402


def synthetic(arch: str, vocab_size: int, device: str):
    """A model of ``arch`` with random weights, and a vocabulary of made-up words that never ends a poem."""
    torch.manual_seed(0)
    hidden, layers = default_size(arch, 100_000)
    model = build_model(arch, vocab_size, hidden, layers, 0.0).to(device).eval()
    if model.decoder.bias is not None:  # the GPT has none: its poems may end early; only words written count
        with torch.no_grad():
            model.decoder.bias[SPECIALS.index(POEM_END)] = -1e4  # write every word asked for
    vocab = Vocab(list(SPECIALS) + [f"w{i}" for i in range(vocab_size - len(SPECIALS))])
    return model, vocab


@torch.no_grad()
def rerun_ms_per_word(model, vocab: Vocab, start: str, poem: tuple[str, bool], device: str, precision: str,
                      words: int | None = None) -> float:
    """The seed's way: feed the whole growing text at every step, keep only the last prediction and draw from it;
    the text fed is the stateful writing's ``poem`` (its tokens, and its end where it ended by itself), so that both
    ways do the same steps, in the arithmetic the stateful writing used. ``words``: only the poem's first that many
    words. ms per word, the start's words counted as the stateful writing counts them."""
    text, ended = poem
    tokens = tokenize(text, end=False)
    at = [i for i, t in enumerate(tokens) if is_word(t)]
    if words and len(at) > words:  # the poem up to its words-th word
        tokens, ended = tokens[: at[words - 1] + 1], False
    ids = [vocab.stoi[POEM_END], *vocab.encode(tokens)]
    steps = range(len(start_tokens(start, vocab)), len(tokens) + ended)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for n in steps:  # predict token n from the poem break and the n tokens before it
        with autocast(device, precision):
            logits, _ = model(torch.tensor([ids[: n + 1]], device=device))
        torch.multinomial(logits[0, -1].float().softmax(-1).cpu(), 1, generator=gen)  # drawn, as the seed did
    return (time.perf_counter() - t0) * 1000 / max(sum(map(is_word, tokens)), 1)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def count_words(poems) -> int:
    return sum(is_word(t) for p, _ in poems for t in tokenize(p, end=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="seed")
    p.add_argument("--vocab", type=int, default=5437)
    p.add_argument("--run", help="time a trained run instead of random weights")
    p.add_argument("--words", type=int, default=200)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rerun-words", type=int, help="the stateful poem's first words re-run the slow way (default: all)")
    p.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (see `neuralda generate --help`)")
    p.add_argument("--rounds", type=int, default=3, help="timings alternated this many times; the best is kept")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    device = pick_device(args.device)
    if args.run:
        run = Run.open(args.run)
        model, _ = run.load_model("best", device=device)
        vocab, start = run.vocab, "love"
    else:
        model, vocab = synthetic(args.arch, args.vocab, device)
        start = vocab.itos[len(SPECIALS)]

    def write(n: int, seed: int, words: int = args.words):
        return write_poems(model, vocab, start, words, n, seed=seed, precision=args.precision)

    write(1, 0, words=5)  # warm up
    steps = writing_steps(model, torch.device(device), args.precision)
    # What writing really used: packed steps say their type; a model under autocast (bf16 by name on a GPU) does not.
    dtype = getattr(steps, "dtype", None)
    precision = "bf16" if dtype == torch.bfloat16 or (dtype is None and args.precision == "bf16") else "fp32"
    rerun_ms, stateful_ms, one_by_one_wps, batched_wps = [], [], [], []
    for _ in range(args.rounds):  # alternated, the best of each kept (as timeit does): a busy machine only slows
        seconds, poems = timed(lambda: write(1, 1))
        stateful_ms.append(seconds * 1000 / max(count_words(poems), 1))
        rerun_ms.append(rerun_ms_per_word(model, vocab, start, poems[0], device, precision, args.rerun_words))
        # The same n poems both ways (a trained model's end at their own lengths).
        one_by_one_s, singles = timed(lambda: [write(1, 10 + i)[0] for i in range(args.n)])
        batched_s, batch = timed(lambda: write(args.n, 10))
        one_by_one_wps.append(count_words(singles) / one_by_one_s)
        batched_wps.append(count_words(batch) / batched_s)
    rerun_ms, stateful_ms = min(rerun_ms), min(stateful_ms)
    one_by_one_wps, batched_wps = max(one_by_one_wps), max(batched_wps)
    report(
        "generate_speed",
        {
            "arch": "run" if args.run else args.arch, "vocab": len(vocab), "device": device, "words": args.words,
            "precision": precision,
            "stateful_ms_per_word": round(stateful_ms, 3), "rerun_ms_per_word": round(rerun_ms, 3),
            "stateful_speedup": round(rerun_ms / stateful_ms, 2),
            "rerun_words": args.rerun_words, "rounds": args.rounds, "n": args.n, "one_by_one_words_per_s": round(one_by_one_wps, 1),
            "batched_words_per_s": round(batched_wps, 1), "batched_speedup": round(batched_wps / one_by_one_wps, 2),
            "batched_equals_one_by_one": batch == singles,
            "peak_rss_mb": round(peak_rss_mb()),
        },
    )


if __name__ == "__main__":
    main()
