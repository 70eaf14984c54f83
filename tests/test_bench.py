"""The benchmarks' plumbing on tiny models: they run and print one valid JSON object (their numbers are not tested)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench(tmp_path, script, *args):
    env = {**os.environ, "NEURALDA_BENCH_RESULTS": str(tmp_path / "results")}
    out = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    saved = (tmp_path / "results" / f"{script.removesuffix('.py')}.jsonl").read_text().splitlines()
    assert json.loads(saved[-1]) == result
    return result


def test_train_speed(tmp_path, corpus_file):
    r = bench(tmp_path, "train_speed.py", "--arch", "lstm", "--corpus", corpus_file, "--hidden", 16, "--layers", 1,
              "--rounds", 2, "--check-steps", 2, "--check-seeds", 2, "--precision", "bf16")
    assert r["bare_tokens_per_s"] > 0 and r["ours_tokens_per_s"] > 0 and r["ratio"] > 0
    assert len(r["bare_rounds"]) == len(r["ours_rounds"]) == len(r["ours_epochs"]) == 2
    pairs = [o / b for o, b in zip(r["ours_rounds"], r["bare_rounds"])]
    assert r["paired_ratio"] == pytest.approx(sum(pairs) / 2, abs=1e-3)
    assert len(r["val_ppl_bf16"]) == len(r["val_ppl_fp32"]) == 2 and r["bf16_ppl_ratio"] > 0
    assert r["check_steps"] == 2  # this corpus's epoch is one batch: the check trains two epochs' worth
    assert "bf16_ppl_within_2pct" in r and r["peak_rss_mb"] > 0 and r["ours_alone_peak_rss_mb"] > 0
    epoch = r["ours_epochs"][0]
    assert r["epoch_ratio"] > 0 and epoch["median_epoch_s"] > 0 and isinstance(epoch["outside_epochs_s"], float)


def test_generate_speed(tmp_path):
    r = bench(tmp_path, "generate_speed.py", "--arch", "lstm", "--vocab", 300, "--words", 20, "--n", 4,
              "--rerun-words", 5, "--rounds", 2)
    assert r["stateful_ms_per_word"] > 0 and r["batched_equals_one_by_one"] is True and r["rounds"] == 2
    assert r["rerun_words"] == 5 and r["precision"] in ("bf16", "fp32")


def test_results_are_strict_json():
    """A perplexity past float64 or a mean of nothing is null, not NaN or Infinity, which JSON has not."""
    import math
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from common import finite

    value = {"ppl": [math.inf, 2.5], "p95": math.nan, "n": 3, "x": {"y": -math.inf}}
    assert json.loads(json.dumps(finite(value), allow_nan=False)) == {"ppl": [None, 2.5], "p95": None, "n": 3,
                                                                      "x": {"y": None}}


def test_quality(tmp_path, corpus_file):
    out = tmp_path / "quality.json"
    r = bench(tmp_path, "quality.py", "--budget", "3s", "--archs", "lstm,seed", "--corpus", corpus_file,
              "--samples", 2, "--out", out)
    table = json.loads(out.read_text())
    assert [row["arch"] for row in table["rows"]] == ["lstm", "seed"] == [row["arch"] for row in r["rows"]]
    assert all(row["best_val_ppl"] > 0 and row["epochs"] >= 1 for row in table["rows"])
    assert table["markdown"].count("\n| `") == 2


def test_serve_load(tmp_path, tiny_run):
    r = bench(tmp_path, "serve_load.py", tiny_run, "--requests", 20, "--clients", 4, "--words", 10)
    assert r["errors"] == 0 and r["requests"] == 20 and r["p95_ms"] >= r["p50_ms"] > 0
