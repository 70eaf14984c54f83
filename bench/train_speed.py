"""Training speed: `neuralda train`'s own loop against a minimal PyTorch loop over the same model and data.

    python bench/train_speed.py [--arch seed|thoutt|lstm|gpt] [--batch-size B] [--seq-len T] [--device D] [--epochs E]

Rounds alternate (bare then ours, ours then bare, ...) in one process: ``ratio`` compares the best of each,
``paired_ratio`` is the median of each round's ratio (ours against the bare loop run next to it). Ours counts whole
epochs: training, validation, metrics, checkpoints (on a GPU an epoch of the shared corpora is a few steps: give
``--epochs`` so that warm-up is not most of what is timed); ``epoch_ratio`` compares a typical (median) epoch of
ours, validation included, with the bare loop's median epoch, and ``ours_epochs`` says where the rest went. Then
the precision check: held-out perplexity after the first ``--check-steps`` batches of our own loop in bf16 autocast
and in full float32 (no TF32 on a GPU), from the same start, for ``--check-seeds`` seeds (each its own split). On a
CPU the bare loop runs with glibc keeping freed memory, as ours does (a bare loop's best: 45% faster than with
glibc's defaults for our lstm). ``peak_rss_mb`` is this process (both loops); ``ours_alone_peak_rss_mb`` is one
epoch of ours in a process of its own.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_corpus, peak_rss_mb, report  # noqa: E402

from neuralda.evaluate import autocast, perplexity, token_nll  # noqa: E402
from neuralda.run import Run  # noqa: E402
from neuralda.train import (  # noqa: E402
    Progress, TrainConfig, Trainer, _keep_freed_memory, _stream, batches, make_optimizer, pick_device, pick_precision,
    train,
)


def bare_loop(run: Run, ids: torch.Tensor, device: str, precision: str, epochs: int = 1) -> tuple[float, list[float]]:
    """The minimal loop, from the run's seed: forward, loss, backward, step; no validation, no logging.

    Runs ``epochs`` epochs, each ending with a wait for the device (as ours does); returns the tokens/s it trained
    at and each epoch's seconds.
    """
    c = run.config
    torch.manual_seed(c["seed"])
    model = run.build_model().to(device).train()
    opt = make_optimizer(model, c)
    hidden, tokens, seconds = None, 0, []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        for x, y, reset, _ in batches(ids, c, epoch):
            with autocast(device, precision):
                logits, hidden = model(x, None if reset else hidden)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if c["stateful"]:
                hidden = [(h.detach(), s.detach()) for h, s in hidden]
            tokens += y.numel()
        loss.item()  # wait for the epoch's last step
        seconds.append(time.perf_counter() - t0)
    return tokens / (time.perf_counter() - start), seconds


def median(values: list[float]) -> float:
    """The middle value (the upper of the two middle ones of an even count)."""
    return sorted(values)[len(values) // 2]


def median_of_pairs(ours: list[float], bare: list[float]) -> float:
    """The median of each round's ratio of ours to the bare loop (the mean of the middle two of an even count)."""
    return statistics.median(o / b for o, b in zip(ours, bare))


def ours_after_steps(cfg: dict, output: str, precision: str, steps: int):
    """The model after the first ``steps`` batches of `neuralda train`'s own loop in ``precision`` (its loss, its
    clipping, its row groups), from the run's seed, over as many epochs as they take; "fp32" in full float32 (no TF32
    on a GPU). Returns the model and the batches it trained (fewer only for a corpus shorter than one window)."""
    trainer = Trainer(TrainConfig(output=output, **{**cfg, "precision": precision}), False, lambda s: None)
    c = trainer.c
    ids, rare = trainer.train_ids, trainer.rare
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    done, epoch = 0, 0
    try:
        while done < steps:  # the seed's epoch of the shared corpora is 7 batches: 20 steps are 3 epochs
            epoch += 1
            keep = (steps - done) * c["batch_size"] * c["seq_len"] + 1  # either layout's tokens for that many batches
            trainer.train_ids, trainer.rare = ids[:keep], rare[:keep]
            batches = trainer._train_epoch(epoch, Progress(False, epoch, steps)).batches
            if not batches:  # a corpus shorter than one window
                break
            done += batches
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    return trainer.model, done


def precision_check(cfg: dict, tmp: str, steps: int, seeds: list[int]) -> dict:
    """Held-out perplexity after ``steps`` batches of our loop in float32 and in bf16, from the same start, for each
    seed. One run's bf16 trajectory strays from float32's by a few percent either way (our gpt after 20 steps, nine
    seeds: -1.9% to +2.6% with the loss made 16 MB at a time, -3.2% to +7.5% with whole row groups; four seeds after
    60 steps: +0.1% to +2.8%, -0.6% to +5.4%), so the verdict takes the seeds' ratios together (geometric mean)."""
    ppl: dict[str, list[float]] = {"fp32": [], "bf16": []}
    trained = []
    for seed in seeds:
        for precision, values in ppl.items():
            out = f"{tmp}/check-{precision}-{seed}"
            model, batches = ours_after_steps({**cfg, "seed": seed}, out, precision, steps)
            values.append(perplexity(*token_nll(model, _stream(Run.open(out), "val"))))
            trained.append(batches)
    ratio = math.exp(statistics.mean(math.log(b / f) for b, f in zip(ppl["bf16"], ppl["fp32"])))
    # check_steps: the steps trained, not those asked for.
    return {"check_steps": min(trained), "check_seeds": seeds, "val_ppl_fp32": ppl["fp32"], "val_ppl_bf16": ppl["bf16"],
            "bf16_ppl_ratio": round(ratio, 5), "bf16_ppl_within_2pct": abs(ratio - 1) <= 0.02}


def epoch_breakdown(rows: list[dict], loop_seconds: float) -> dict:
    """Where a run of ours spent its time: its first epoch (warm-up), a typical one (the median: training,
    validation and metrics), and what lies outside the epochs (checkpoints, the last sample poem)."""
    seconds = [row["seconds"] for row in rows]
    return {"first_epoch_s": rows[0]["seconds"], "median_epoch_s": median(seconds),
            "outside_epochs_s": round(loop_seconds - sum(seconds), 3)}


def _train_once(cfg: dict, result) -> None:
    train(TrainConfig(**cfg), log=lambda s: None)
    # VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak from the fork.
    status = Path("/proc/self/status").read_text()
    peaks = [int(ln.split()[1]) / 1024 for ln in status.splitlines() if ln.startswith("VmHWM:")]
    result.put(peaks[0] if peaks else None)  # some sandboxes' /proc leaves it out


def ours_peak_rss_mb(cfg: dict) -> float | None:
    """Peak resident memory of `neuralda train` alone: one epoch in a fresh process of its own (Linux); None where
    it failed or could not tell (the child's error is on stderr)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    result = ctx.Queue()
    child = ctx.Process(target=_train_once, args=(cfg, result))
    child.start()
    child.join()  # before reading: a child that failed never answers (one number cannot fill the queue's pipe)
    return result.get(timeout=10) if child.exitcode == 0 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="seed")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--rounds", type=int, default=4, help="rounds of each loop, alternated")
    p.add_argument("--epochs", type=int, default=1, help="epochs timed in each round, of both loops")
    p.add_argument("--check-steps", type=int, default=20, help="steps before the bf16/fp32 perplexity check (0: skip)")
    p.add_argument("--check-seeds", type=int, default=3, help="seeds the perplexity check runs from")
    p.add_argument("--corpus", type=Path, help="default: the shared corpora combined, else the demo corpus")
    p.add_argument("--hidden", type=int)
    p.add_argument("--layers", type=int)
    args = p.parse_args()
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device, args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, corpus_name = (args.corpus, args.corpus.name) if args.corpus else bench_corpus(Path(tmp))
        cfg = dict(
            corpus=str(corpus), arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, seq_len=args.seq_len,
            device=device, precision=precision, progress=False, save_at=(), hidden=args.hidden, layers=args.layers,
        )
        ours, bare, bare_epochs, val_shares, epochs = [], [], [], [], []
        first = Run.open(train(TrainConfig(output=f"{tmp}/probe", **{**cfg, "epochs": 1}), log=lambda s: None).run)
        ids = _stream(first, "train").to(device)

        def run_bare() -> None:
            with _keep_freed_memory(device):
                tokens_per_s, seconds = bare_loop(first, ids, device, precision, epochs=args.epochs)
            bare.append(tokens_per_s)
            bare_epochs.append(median(seconds))

        def run_ours() -> None:
            result = train(TrainConfig(output=f"{tmp}/ours{len(ours)}", **cfg), log=lambda s: None)
            ours.append(result.tokens_trained / result.loop_seconds)
            rows = Run.open(result.run).metrics()
            val_shares.append(sum(row["val_seconds"] for row in rows) / result.loop_seconds)
            epochs.append(epoch_breakdown(rows, result.loop_seconds))

        loops, cuda = {"bare": run_bare, "ours": run_ours}, device.startswith("cuda")
        cuda_peaks = dict.fromkeys(loops, 0)  # each loop's own: the process's holds the probe's and the check's too
        for r in range(args.rounds):  # bare, ours, then ours, bare: a machine speeding up or slowing favours neither
            for name in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                loops[name]()
                if cuda:
                    cuda_peaks[name] = max(cuda_peaks[name], torch.cuda.max_memory_allocated())
        check = {}
        if args.check_steps and precision == "bf16":
            seeds = [first.config["seed"] + i for i in range(args.check_seeds)]
            check = precision_check(cfg, tmp, args.check_steps, seeds)
        c = first.config
        ours_rss = ours_peak_rss_mb({**cfg, "epochs": 1, "output": f"{tmp}/alone"})
    report(
        "train_speed",
        {
            "arch": args.arch, "device": device, "precision": precision, "corpus": corpus_name,
            "batch_size": c["batch_size"], "seq_len": c["seq_len"], "train_tokens": c["train_tokens"],
            "epochs": args.epochs,
            "bare_tokens_per_s": max(bare), "ours_tokens_per_s": max(ours), "ratio": max(ours) / max(bare),
            # Each round's ours against its bare loop, next to each other in time: the median of these is what a
            # machine whose speed wanders by 2x over minutes (ours) moves least.
            "paired_ratio": round(median_of_pairs(ours, bare), 3),
            "bare_rounds": bare, "ours_rounds": ours, "peak_rss_mb": round(peak_rss_mb()),
            "cuda_peak_mb": {k: round(v / 2**20) for k, v in cuda_peaks.items()} if cuda else None,
            "ours_alone_peak_rss_mb": ours_rss and round(ours_rss), "validation_share": round(max(val_shares), 3),
            # A typical (median) epoch of ours, validation included, against the bare loop's, the best round of
            # each: the ratio once a run's warm-up and end are spread over many epochs (a GPU's epoch of the shared
            # corpora is a few steps, and 20 epochs are seconds).
            "ours_epochs": epochs, "bare_epoch_s": round(min(bare_epochs), 4),
            "epoch_ratio": round(min(bare_epochs) / min(e["median_epoch_s"] for e in epochs), 3),
            **check,
        },
    )


if __name__ == "__main__":
    main()
