"""Model quality in the same time budget: held-out perplexity, the epoch of the best, copying, time.

    python bench/quality.py [--budget 10m] [--archs lstm,gpt,seed,thoutt] [--corpus FILE] [--readme]

Each architecture trains with its own recipe on the same corpus (the six shared corpora combined, split by poem
with seed 0, 10% held out) until its recipe stops it or the budget runs out; then its best checkpoint writes 20
poems from "love" for the copying measures. The table goes to bench/results/quality.json and, with --readme,
between the quality markers of README.md. ``--full-seed`` also runs the seed's whole 400 epochs (for a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, bench_corpus, finite, report  # noqa: E402

from neuralda.evaluate import evaluate_run  # noqa: E402
from neuralda.files import atomic_write  # noqa: E402
from neuralda.generate import SamplingConfig  # noqa: E402
from neuralda.run import Run  # noqa: E402
from neuralda.train import TrainConfig, parse_duration, pick_device, train  # noqa: E402

SEED_SAMPLING = SamplingConfig(temperature=1.0, top_p=1.0)  # the seed's: straight from the model's probabilities
README_START, README_END = "<!-- quality:start -->", "<!-- quality:end -->"


def measure(arch: str, corpus: Path, out: Path, budget: float | None, device: str, samples: int) -> dict:
    """Train ``arch`` within ``budget`` seconds and measure its best checkpoint."""
    t0 = time.monotonic()
    result = train(
        TrainConfig(corpus=str(corpus), output=str(out), arch=arch, max_time=budget, device=device, progress=False,
                    save_at=()),
        log=lambda s: print(f"[{arch}] {s}", file=sys.stderr, flush=True),
    )
    seconds = time.monotonic() - t0
    row = evaluate_run(out, "best", samples=samples, seed=0, device=device, sampling=SEED_SAMPLING)
    config = Run.open(out).config
    return {
        "arch": arch, "best_val_ppl": round(row["perplexity"], 1), "best_epoch": result.best_epoch,
        "epochs": result.epochs, "stopped": result.stopped, "seconds": round(seconds),
        "params": sum(p.numel() for p in Run.open(out).build_model().parameters()), "hidden": config["hidden"], "layers": config["layers"],
        "batch_size": config["batch_size"], "seq_len": config["seq_len"],
        **{k: row[k] for k in ("perplexity_per_word", "bits_per_char", "oov_rate", "copied_4gram_share",
                               "copied_6gram_share", "copied_8gram_share", "longest_copy", "distinct_1",
                               "distinct_2", "ended_share")},
    }


CORPUS_NAMES = {"shared": "the six shared corpora", "demo": "the bundled demo corpus"}


def markdown(rows: list[dict], budget: str, device: str, corpus: str, samples: int) -> str:
    lines = [
        f"Trained on {CORPUS_NAMES.get(corpus, corpus)} (split by poem, seed 0, 10% held out), {budget} each on "
        f"{device}; {samples} poems from \"love\" at temperature 1 for the copying columns.",
        "",
        "| model | held-out ppl | best epoch / run | time | 6-word copies | 8-word copies | longest copy | distinct-2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['arch']}` {r['layers']} x {r['hidden']} | {r['best_val_ppl']:.1f} | {r['best_epoch']} / "
            f"{r['epochs']} ({r['stopped']}) | {r['seconds'] // 60}m{r['seconds'] % 60:02d}s | "
            f"{r['copied_6gram_share']:.1%} | {r['copied_8gram_share']:.1%} | {r['longest_copy']} | {r['distinct_2']:.3f} |"
        )
    return "\n".join(lines)


def update_readme(table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if README_START not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write(readme, f"{head}{README_START}\n{table}\n{README_END}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="10m", help="time per architecture (default 10m)")
    p.add_argument("--archs", default="lstm,gpt,seed,thoutt")
    p.add_argument("--corpus", type=Path, help="default: the shared corpora combined, else the demo corpus")
    p.add_argument("--device", default="auto")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--full-seed", action="store_true", help="also the seed's full 400 epochs, without a budget")
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    p.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    p.add_argument("--keep", type=Path, help="keep the trained runs in this folder (default: a temporary one)")
    args = p.parse_args()
    budget = parse_duration(args.budget)
    device = pick_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.keep or Path(tmp)
        corpus, corpus_name = (args.corpus, args.corpus.name) if args.corpus else bench_corpus(Path(tmp))
        for arch in args.archs.split(","):
            rows.append(measure(arch, corpus, runs / arch, budget, device, args.samples))
        if args.full_seed:
            full = measure("seed", corpus, runs / "seed-full", None, device, args.samples)
            rows.append({**full, "arch": "seed (400 epochs)"})
    table = markdown(rows, args.budget, device, corpus_name, args.samples)
    result = {"budget": args.budget, "device": device, "corpus": corpus_name, "rows": rows, "markdown": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(finite(result), indent=2, allow_nan=False) + "\n")
    if args.readme:
        update_readme(table)
    report("quality", {k: v for k, v in result.items() if k != "markdown"})


if __name__ == "__main__":
    main()
