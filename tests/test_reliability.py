"""A training run killed with SIGKILL at random moments, ten times, then resumed, finishes like any other."""

import json
import random
import signal
import subprocess
import sys
import time

from neuralda.run import Run

EPOCHS = 6
ARGS = ["--epochs", str(EPOCHS), "--hidden", "32", "--layers", "1", "--batch-size", "8", "--seq-len", "16", "-q"]


def test_sigkill_ten_times_then_resume(tmp_path, corpus_file):
    out = tmp_path / "run"
    rng = random.Random(0)
    for _ in range(10):
        resume = ["--resume"] if (out / "config.json").exists() else [str(corpus_file)]
        proc = subprocess.Popen([sys.executable, "-m", "neuralda", "train", *resume, "-o", str(out), *ARGS],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run([sys.executable, "-m", "neuralda", "train", "--resume", "-o", str(out), *ARGS],
                           capture_output=True, text=True)
    if final.returncode and "not a run directory" in final.stderr:  # every kill came before config.json
        final = subprocess.run([sys.executable, "-m", "neuralda", "train", str(corpus_file), "-o", str(out), *ARGS],
                               capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))  # each epoch once
    run = Run.open(out)
    for name in run.checkpoints():
        run.load_model(name)  # every checkpoint loads


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "run"
    args = ["--epochs", "5", "--hidden", "32", "--layers", "1", "--lr", "1e30", "--precision", "fp32", "-q"]
    result = subprocess.run([sys.executable, "-m", "neuralda", "train", str(corpus_file), "-o", str(out), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "the training loss became nan" in result.stderr
    assert "Traceback" not in result.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    run = Run.open(out)
    _, meta = run.load_model("last")
    assert meta["epoch"] == epochs[-1] < 5  # the checkpoint of the last epoch that ended with a number
