"""A training run killed with SIGKILL at random moments, ten times, then resumed, finishes like any other."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_config

from neuralda.errors import NeuraldaError
from neuralda.run import Run
from neuralda.train import train

EPOCHS = 6
# Checkpoints after every epoch: kills then land between them too, and each resume starts mid-run.
ARGS = ["--epochs", str(EPOCHS), "--hidden", "32", "--layers", "1", "--batch-size", "8", "--seq-len", "16", "-q",
        "--save-every", "0"]


def test_sigkill_ten_times_then_resume(tmp_path, corpus_file):
    out = tmp_path / "run"
    rng = random.Random(0)
    # The same command every time, as a user would rerun it: it starts the run if no kill let it write config.json.
    command = [sys.executable, "-m", "neuralda", "train", str(corpus_file), "--resume", "-o", str(out), *ARGS]
    for _ in range(10):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run(command, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))  # each epoch once
    run = Run.open(out)
    for name in run.checkpoints():
        run.load_model(name)  # every checkpoint loads


@pytest.mark.parametrize("save_every", ["0", "3600"])  # 3600: epochs trained after the last checkpoint are cut
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file, save_every):
    out = tmp_path / "run"
    args = ["--epochs", "8", "--hidden", "32", "--layers", "1", "--lr", "1e6", "--precision", "fp32", "-q",
            "--save-every", save_every]
    result = subprocess.run([sys.executable, "-m", "neuralda", "train", str(corpus_file), "-o", str(out), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and re.search("the training loss became (nan|inf) in epoch", result.stderr)
    assert "start a new run with a lower --lr" in result.stderr  # a resume keeps the run's --lr
    assert "Traceback" not in result.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    run = Run.open(out)
    _, meta = run.load_model("last")
    assert epochs == list(range(1, meta["epoch"] + 1)) and meta["epoch"] < 5  # cut back to the checkpoint
    assert f"the checkpoints of epoch {meta['epoch']} are kept" in result.stderr


def test_a_run_whose_scores_overflow_while_its_loss_is_finite_says_it_diverged(tmp_path, corpus_file):
    """At --lr 1e5 the loss stays finite (1e22 by epoch 4) while the scores overflow: the poem written at the end
    failed with "is the checkpoint damaged?"."""
    config = tiny_config(corpus_file, tmp_path / "run", epochs=4, lr=1e5, precision="fp32", batch_size=32, seq_len=35)
    with pytest.raises(NeuraldaError, match="^after epoch 4 the model's next-word scores overflow: the training diverged"):
        train(config, log=lambda s: None)


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB file system (tmpfs), so a full disk is the kernel's ENOSPC, not a simulation."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small file system here (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk, leave: int) -> None:
    """Fill ``disk`` until only about ``leave`` bytes are free."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # unbuffered: closing has nothing left to flush
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    free = shutil.disk_usage(disk).free
    os.truncate(disk / "filler", max(0, os.path.getsize(disk / "filler") - (leave - free)))


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(small_disk, corpus_file):
    out = small_disk / "run"
    args = ["--hidden", "32", "--layers", "1", "--batch-size", "8", "--seq-len", "16", "--precision", "fp32", "-q"]

    def neuralda_train(*more):
        return subprocess.run([sys.executable, "-m", "neuralda", "train", *more, "-o", str(out), *args],
                              capture_output=True, text=True)

    first = neuralda_train(str(corpus_file), "--epochs", "1")
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    fill(small_disk, leave=(out / "checkpoints" / "best.safetensors").stat().st_size // 2)

    full = neuralda_train("--resume", "--epochs", "3")
    assert full.returncode == 2 and "Traceback" not in full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("neuralda: error:") and "No space left on device" in last and "untouched" in last
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before  # no torn or temporary file
    assert Run.open(out).load_model("last")[1]["epoch"] == 1

    (small_disk / "filler").unlink()
    again = neuralda_train("--resume", "--epochs", "3")
    assert again.returncode == 0, again.stderr
    assert [row["epoch"] for row in Run.open(out).metrics()] == [1, 2, 3]


def test_a_line_that_cannot_be_added_is_a_one_line_error_naming_the_file(small_disk):
    """A full disk under metrics.jsonl or a scrape's corpus said only "No space left on device"."""
    from neuralda.files import append_line

    log = small_disk / "metrics.jsonl"
    append_line(log, '{"epoch": 1}')
    fill(small_disk, leave=0)
    with pytest.raises(NeuraldaError, match=rf"^{log}: could not add a line to it \(No space left on device\)$"):
        append_line(log, '{"epoch": 2, "note": "' + "x" * 100_000 + '"}')
    assert log.read_text().startswith('{"epoch": 1}\n')


def damage_data(run) -> None:
    """Flip one byte in the tensor data of the best checkpoint (its header stays valid)."""
    best = run / "checkpoints" / "best.safetensors"
    raw = bytearray(best.read_bytes())
    raw[-100] ^= 0xFF
    best.write_bytes(bytes(raw))


def damage_header(run) -> None:
    """Flip one bit of a number in the JSON header of the last checkpoint (the learning rate a resume would use):
    the header stays valid JSON, so only a checksum over it can tell."""
    last = run / "checkpoints" / "last.safetensors"
    raw = bytearray(last.read_bytes())
    at = raw.index(b'\\"lr\\": ') + len(b'\\"lr\\": ')
    at += next(i for i, c in enumerate(raw[at:at + 30]) if chr(c) in "123456789")  # a digit other than 0
    raw[at] ^= 1  # '1' <-> '0', '2' <-> '3', ...: still a number
    last.write_bytes(bytes(raw))


def shrink_vocab(run) -> None:
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["tokens"] = vocab["tokens"][:-3]
    (run / "vocab.json").write_text(json.dumps(vocab))


def drop_a_special(run) -> None:
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["tokens"] = [t for t in vocab["tokens"] if t != "<poembreak>"] + ["filler"]  # as many tokens as weights
    (run / "vocab.json").write_text(json.dumps(vocab))


def future_format(run) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "format_version": 99}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (damage_data, "damaged checkpoint (its bytes do not match the checksum"),
        (damage_header, "damaged checkpoint (its header does not match the checksum"),
        (shrink_vocab, "the weights do not match the model"),
        (future_format, "written by a newer neuralda (format 99)"),
        (drop_a_special, "not a neuralda vocabulary (no <poembreak> token)"),
    ],
)
def test_files_a_user_did_not_make_are_one_line_and_exit_2(tiny_run, tmp_path, capsys, damage, message):
    from neuralda.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["generate", str(run), "--seed", "1", "--words", "5"]) == 0
    capsys.readouterr()
    damage(run)
    command = ["generate", str(run), "--seed", "1", "--words", "5"]
    if damage is damage_header:  # only 'last' and 'epoch-N' carry the learning rate; resume reads 'last'
        command += ["--checkpoint", "last"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralda: error:") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("stop, status", [("close the log", 141), ("SIGTERM", 143)])
def test_a_run_stopped_midway_keeps_its_best(tmp_path, corpus_file, stop, status):
    """`neuralda train ... 2>&1 | head -3` (the log's reader goes away: the exit status of a closed pipe), or SIGTERM
    (a scheduler's time limit, `timeout`): the run stops as on Ctrl-C, writing the
    best weights held in memory, and can be resumed."""
    out = tmp_path / "run"
    # Not quiet: a line each epoch; the best weights are held back between checkpoints.
    args = ["--epochs", "200", "--patience", "0", "--hidden", "32", "--layers", "1", "--batch-size", "8"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as in a user's shell
    proc = subprocess.Popen([sys.executable, "-m", "neuralda", "train", str(corpus_file), "-o", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if line.startswith("epoch 2/"):
            break
    if stop == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert "interrupted:" in rest and "continue with --resume" in rest and "Traceback" not in rest
    else:
        proc.stderr.close()
    assert proc.wait(timeout=120) == status
    run = Run.open(out)
    assert run.checkpoint_meta("best")["epoch"] >= 2 and len(run.metrics()) < 200


def test_a_poem_reader_that_goes_away_is_no_error(tiny_run):
    """`neuralda generate ... | head -2` got what it asked for."""
    proc = subprocess.Popen([sys.executable, "-m", "neuralda", "generate", str(tiny_run), "--n", "500"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0 and proc.stderr.read() == b""


def test_a_report_whose_page_cannot_be_written_replaces_nothing(small_disk, tiny_run, tmp_path):
    """With --force it had replaced the user's post.md and written the plot before failing on the page (a full or
    read-only disk); without, it left them, and the same command again said they already existed."""
    from neuralda.report import write_report

    out = tmp_path / "post.md"
    out.write_text("my notes\n")
    fill(small_disk, leave=0)
    with pytest.raises(NeuraldaError, match="page.html: could not write it"):
        write_report([str(tiny_run)], out, small_disk / "page.html", samples=1, words=8, force=True)
    assert out.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["disk", "post.md"]
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_rename_refused_after_others_names_its_file_and_those_written_before_it(tmp_path, monkeypatch):
    """An immutable post.md (chattr +i) refused its rename after the plot's: the error named the page, said the
    previous file was untouched, and did not say the plot had been replaced."""
    import errno

    from neuralda import files

    real = os.replace

    def refused_for_the_report(source, target):
        if str(target).endswith("post.md"):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real(source, target)

    monkeypatch.setattr(files.os, "replace", refused_for_the_report)
    paths = [tmp_path / name for name in ("post-perplexity.png", "post.md", "post.html")]
    with pytest.raises(NeuraldaError, match=rf"^{paths[1]}: could not write it .*written before it: {paths[0]}\)$"):
        files.write_together(dict.fromkeys(paths, b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post-perplexity.png"]  # no temporary file left
