"""Data-parallel training with torchrun: 2 gloo processes on the CPU match one process with the same global batch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuralda.run import read_checkpoint

ARGS = ["--epochs", "2", "--hidden", "32", "--layers", "1", "--seq-len", "16",
        "--dropout", "0", "--device", "cpu", "--precision", "fp32", "-q"]  # no dropout: the same masks everywhere


def weights(run: Path) -> dict:
    tensors, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if not k.startswith("optim/")}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
# Slices of 4 rows and 3; one process left with none; slices of 300 rows, each run in groups (gradients averaged
# across the processes once, after a slice's last group).
@pytest.mark.parametrize("batch", ["7", "1", "600"])
def test_two_gloo_processes_match_one(tmp_path, corpus_file, batch):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*ARGS, "--batch-size", batch]
    single = [sys.executable, "-m", "neuralda", "train", str(corpus_file), "-o", str(one), *args]
    subprocess.run(single, check=True, capture_output=True, timeout=120)
    ddp = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "neuralda", "train", str(corpus_file), "-o", str(two), *args]
    out = subprocess.run(ddp, capture_output=True, text=True, timeout=180)
    # What the workers said, before torchrun's own traceback (the last) and its summary of who failed.
    assert out.returncode == 0, out.stderr.rsplit("Traceback (most recent call last)", 1)[0][-2000:]
    assert "2 processes" in out.stderr
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    # Only rank 0 wrote the metrics: each epoch once; the held-out loss, read half by each process, is one's.
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)]
    assert len(rows[1]) == 2
    assert [r["val_loss"] for r in rows[1]] == pytest.approx([r["val_loss"] for r in rows[0]], abs=2e-5)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_an_error_only_rank_zero_finds_is_one_line(tmp_path, corpus_file):
    """Rank 0 alone prepares the run directory; an existing run there is its one line, not rank 1's broken
    collective's traceback, and the job fails."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    ddp = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "neuralda", "train", str(corpus_file), "-o", str(run), *ARGS]
    out = subprocess.run(ddp, capture_output=True, text=True, timeout=180)
    assert out.returncode != 0
    assert out.stderr.count("neuralda: error:") == 1 and "already holds a run" in out.stderr, out.stderr[-2000:]
    assert "[rank1]" not in out.stderr and "Connection closed" not in out.stderr, out.stderr[-2000:]
    # An error every rank finds is said once too.
    out = subprocess.run([*ddp[: -len(ARGS) - 1], str(tmp_path / "new"), *ARGS, "--device", "tpu"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode != 0 and out.stderr.count("neuralda: error: unknown device 'tpu'") == 1, out.stderr[-2000:]
    # A model too large for memory fails as rank 0 prepares the run: rank 1 was left in a broken collective.
    out = subprocess.run([*ddp[: -len(ARGS) - 1], str(tmp_path / "huge"), *ARGS, "--hidden", "300000"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode != 0 and out.stderr.count("neuralda: error: out of memory") == 1, out.stderr[-2000:]
    assert "[rank1]" not in out.stderr and "Connection closed" not in out.stderr, out.stderr[-2000:]


def _agree_on_rank(rank: int, port: int, results) -> None:
    import os

    from neuralda.train import Dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    dist = Dist(rank, 2)
    # Each rank's own held-out loss and clock differ; all must act on rank 0's.
    results[rank] = (dist.agree(1.25 + rank * 1e-9, "cpu"), dist.agree(rank == 1, "cpu"))
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_every_process_acts_on_rank_zeros_loss_and_clock():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_agree_on_rank, args=(port, results), nprocs=2)
    assert dict(results) == {0: (1.25, False), 1: (1.25, False)}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_each_gpu_process_binds_its_process_group_to_its_gpu(monkeypatch):
    """NCCL's barrier() (the first collective) guesses the GPU of a group not bound to one, and warns on rank 0 of
    every job ("barrier(): using the device under current context"); gloo has no device to bind."""
    from neuralda.train import Dist

    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: calls.append((a, k)))
    Dist(1, 2, 1).init("cuda:1")
    Dist(1, 2, 1).init("cpu")
    assert calls == [(("nccl",), {"device_id": torch.device("cuda:1")}), (("gloo",), {})]
