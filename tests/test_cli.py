import json
import shutil
import subprocess
import sys

import pytest


def cli(*args, cwd=None, timeout=None):
    return subprocess.run(
        [sys.executable, "-m", "neuralda", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_help_does_not_import_torch():
    code = "import sys; from neuralda.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_help_lists_the_commands():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("corpus", "train", "generate", "summary", "demo"):
        assert command in out.stdout


def test_summary_of_the_seed():
    out = cli("summary", "--arch", "seed", "--vocab", 5437)
    assert out.returncode == 0 and "Total params: 11,870,525" in out.stdout


def test_train_then_generate_end_to_end(tmp_path, corpus_file):
    run = tmp_path / "run"
    out = cli("train", corpus_file, "-o", run, "--epochs", 2, "--hidden", 32, "--layers", 1, "--batch-size", 8, "-q")
    assert out.returncode == 0, out.stderr
    out = cli("generate", run, "--start", "the sea", "--n", 2, "--seed", 3, "--words", 20, "--format", "json")
    assert out.returncode == 0, out.stderr
    poems = json.loads(out.stdout)
    assert [p["seed"] for p in poems] == [3, 4] and all(p["poem"].startswith("the sea") for p in poems)
    again = cli("generate", run, "--start", "the sea", "--n", 2, "--seed", 3, "--words", 20, "--format", "json")
    assert json.loads(again.stdout) == poems
    md = cli("generate", run, "--n", 1, "--seed", 1, "--words", 30, "--format", "markdown")
    assert md.returncode == 0 and md.stdout.startswith("### love")
    summary = cli("summary", run)
    assert summary.returncode == 0 and "Total params" in summary.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "missing.jsonl", "-o", "out"), "no such file"),
        (("generate", "no-such-run"), "no such run directory"),
        (("train", "-o", "out"), "needs a corpus"),
        (("summary",), "--arch and --vocab"),
        (("summary", "runs/ours", "--arch", "seed"), "a run directory or --arch and --vocab, not both"),
        (("corpus", "import", "poems.txt", "-o", "."), ". is a directory; give a file in it, like corpus.jsonl"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, args, message):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("corpus", "import", "poems.txt", "-o", "notes.txt/corpus.jsonl"),
        ("scrape", "http://127.0.0.1:9/", "-o", "notes.txt/corpus.jsonl", "--links", "a", "--body", "p"),
        ("train", "poems.jsonl", "-o", "notes.txt/run", "--epochs", "1", "--hidden", "8", "--layers", "1", "-q"),
    ],
)
def test_an_output_below_a_file_names_that_file(tmp_path, command):
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "poems.txt").write_text("The rain on the roof\nsings to the stone.\n\nThe stone is still.\n")
    (tmp_path / "poems.jsonl").write_text("".join(json.dumps({"text": f"rain {i}\nstone"}) + "\n" for i in range(20)))
    out = cli(*command, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "notes.txt is a file, not a folder" in out.stderr  # was "File exists"
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


def test_summary_counts_a_model_too_large_to_build():
    # Counted from shapes alone: the embedding alone would take 4 PB (the old summary died with a traceback).
    hidden = 10**8
    out = cli("summary", "--arch", "lstm", "--vocab", 10**7, "--hidden", hidden, "--layers", 1)
    assert out.returncode == 0, out.stderr
    total = int(out.stdout.split("Total params: ")[1].split()[0].replace(",", ""))
    assert total > 10**7 * hidden + 8 * hidden**2  # the embedding and the LSTM's weights at least


def test_out_of_memory_is_one_line_and_exit_2(tmp_path, corpus_file):
    # 288 TB of embedding: more than any machine's address space, so refused at once, never half-allocated.
    out = cli("train", corpus_file, "-o", tmp_path / "r", "--hidden", 10**12, "--epochs", 1, "-q")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("neuralda: error: out of memory") and not (tmp_path / "r").exists()


def test_evaluate_shows_a_dash_for_a_measure_with_nothing_to_measure(tiny_run):
    out = cli("evaluate", tiny_run, "--samples", 0)
    assert out.returncode == 0, out.stderr
    shown = {line[:22].strip(): line[22:] for line in out.stdout.splitlines()}
    assert shown["samples"] == "0" and float(shown["perplexity"]) > 1
    assert shown["distinct 1"] == shown["copied 8gram share"] == shown["longest copy"] == "-"
    assert "None" not in out.stdout


def test_unknown_start_word_and_checkpoint(tiny_run):
    out = cli("generate", tiny_run, "--start", "zebra")
    assert out.returncode == 2 and "does not know the start word 'zebra'" in out.stderr
    out = cli("generate", tiny_run, "--checkpoint", "../../etc/passwd")
    assert out.returncode == 2 and "no checkpoint" in out.stderr


@pytest.mark.parametrize(
    "option, message",
    [
        (("--epochs", "0"), "argument --epochs: must be at least 1, got 0 (see neuralda train --help)"),
        (("--epochs", "x"), "argument --epochs: not a whole number: 'x'"),
        (("--max-time", "soon"), "not a duration"),
        (("--patience", "-1"), "argument --patience: must be at least 0, got -1"),
        (("--weight-decay", "-1"), "--weight-decay must be a finite number, 0 or more, got -1.0"),
        (("--lr", "nan"), "--lr must be a finite number above 0, got nan"),
    ],
)
def test_bad_option_values_are_one_line_and_exit_2(tmp_path, corpus_file, option, message):
    out = cli("train", corpus_file, "-o", tmp_path / "r", *option)
    assert out.returncode == 2 and out.stderr.startswith("neuralda: error: ") and out.stderr.count("\n") == 1
    assert message in out.stderr and not (tmp_path / "r").exists()  # nothing half-made to block the next try


def test_a_foreign_config_json_is_not_a_run(tmp_path, tiny_run):
    folder = tmp_path / "webapp"
    folder.mkdir()
    shutil.copy(tiny_run / "vocab.json", folder / "vocab.json")
    (folder / "config.json").write_text('{"name": "webapp", "hidden": 64}')
    out = cli("summary", folder)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"{folder / 'config.json'}: not a neuralda run configuration (missing arch, layers, dropout)" in out.stderr


@pytest.mark.parametrize("minutes", ["0", "nan", "-1", "inf"])
def test_demo_needs_a_time_limit_above_0(tmp_path, minutes):
    # Refused before the demo scrapes or trains: 0 once meant training with no time limit at all.
    out = cli("demo", "--minutes", minutes, "-o", tmp_path / "runs" / "demo", "-q", timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"--minutes must be a number above 0, got {minutes}" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_demo_scrapes_the_local_site_trains_and_writes(tmp_path):
    out = cli("demo", "--minutes", "0.15", "-o", tmp_path / "runs" / "demo", "--seed", 1, "-q")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "wrote 117 poems" in out.stderr and "127.0.0.1" in out.stderr
    assert 'A poem from "love"' in out.stdout
    poem = out.stdout.split("best checkpoint):", 1)[1].strip()
    # A poem of its own after "love": how long depends on how many epochs a busy machine fits in 9 s (it may end
    # itself after a few words).
    assert poem.startswith("love") and len(poem.split()) > 1
    scraped = [json.loads(line) for line in (tmp_path / "runs" / "demo-corpus.jsonl").read_text().splitlines()]
    assert len(scraped) == 117 and all(p["url"].startswith("http://127.0.0.1:") for p in scraped)
    # A second demo replaces its own run and corpus, also one killed before its config.json was written; it never
    # touches another run.
    shutil.rmtree(tmp_path / "runs" / "demo" / "checkpoints")
    for name in ("config.json", "metrics.jsonl", "samples.jsonl"):
        (tmp_path / "runs" / "demo" / name).unlink()
    again = cli("demo", "--minutes", "0.1", "-o", tmp_path / "runs" / "demo", "-q")
    assert again.returncode == 0, again.stderr[-2000:]
    assert len((tmp_path / "runs" / "demo-corpus.jsonl").read_text().splitlines()) == 117
