"""What every benchmark shares: the corpus it reads and how it reports."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"
RESULTS = Path(os.environ.get("NEURALDA_BENCH_RESULTS", ROOT / "bench" / "results"))  # tests point it elsewhere
DEMO_CORPUS = ROOT / "src" / "neuralda" / "demo" / "poems.jsonl"


def bench_corpus(tmp: Path) -> tuple[Path, str]:
    """The six shared corpora combined when they are here (a user's clone has only the demo corpus)."""
    files = sorted(SHARED_CORPORA.glob("*.jsonl"))
    if not files:
        return DEMO_CORPUS, "demo"
    out = tmp / "shared.jsonl"
    out.write_text("".join(f.read_text(encoding="utf-8") for f in files), encoding="utf-8")
    return out, "shared"


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finite(value):
    """``value`` with each NaN or infinity (a perplexity past float64, a mean of no requests) as None: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def report(name: str, result: dict) -> None:
    """Print one JSON object and append it to bench/results/NAME.jsonl."""
    import torch

    result = {
        "bench": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        **result,
    }
    line = json.dumps(finite(result), allow_nan=False)
    print(line)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a", encoding="utf-8") as f:
        f.write(line + "\n")
    sys.stdout.flush()
