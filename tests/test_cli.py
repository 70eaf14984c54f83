import argparse
import errno
import importlib.util
import inspect
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest


def cli(*args, cwd=None, timeout=None):
    return subprocess.run(
        [sys.executable, "-m", "neuralda", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def cli_here(capfd, *args) -> tuple[int, str, str]:
    """``neuralda ARGS`` in this process, for checks of bad input (a process of its own spends 2 s importing torch):
    (exit status, stdout, stderr). neuralda's own warnings print their line, as there; any other warning fails the
    test, as the lines a process would print for it would (raised as errors instead, one inside a checkpoint's read
    would read as a damaged checkpoint)."""
    import warnings

    from neuralda.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors
            code = e.code
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    out, err = capfd.readouterr()
    return code, out, err


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


def python_as_a_terminal_starts_it(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` with Ctrl-C interrupting it: a Python started in the background may ignore it from birth."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_a_second_ctrl_c_while_exiting_is_no_traceback(tmp_path):
    """Ctrl-C pressed twice: the second can land while Python exits (torch's and threading's exit handlers)."""
    code = (
        "import atexit, os, signal, sys, time\n"
        "from neuralda import cli\n"
        "def interrupted(args): raise KeyboardInterrupt\n"
        "cli.cmd_corpus_stats = interrupted\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))\n"
        "sys.argv = ['neuralda', 'corpus', 'stats', 'c.jsonl']\n"
        "sys.exit(cli.main())\n"
    )
    out = python_as_a_terminal_starts_it(code)
    assert out.returncode == 130 and out.stderr == ""


def test_ctrl_c_while_the_command_loads_is_no_traceback():
    code = (
        "import importlib.abc, os, signal, sys\n"
        "class CtrlC(importlib.abc.MetaPathFinder):\n"  # pressed while the command line's modules load
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'neuralda.models': os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "sys.argv = ['neuralda', '--version']\n"
        "from neuralda.__main__ import run\n"
        "sys.exit(run())\n"
    )
    out = python_as_a_terminal_starts_it(code)
    assert out.returncode == 130 and out.stderr == "" and out.stdout == ""


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
    md = cli("generate", run, "--start", "love\nthe sea", "--n", 1, "--seed", 1, "--words", 30, "--format", "markdown")
    assert md.returncode == 0 and md.stdout.startswith("### love the sea (seed 1)\n\nlove  \nthe sea")
    summary = cli("summary", run)
    assert summary.returncode == 0 and "Total params" in summary.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "missing.jsonl", "-o", "out"), "no such file"),
        (("generate", "no-such-run"), "no such run directory"),
        (("train", "-o", "out"), "needs a corpus"),
        (("summary",), "--arch and --vocab"),
        (("summary", "--arch", "seed"), "--arch and --vocab"),
        (("summary", "--vocab", "10"), "--arch and --vocab"),
        (("scrape", "http://127.0.0.1:9/"), "scrape needs START_URL... and -o CORPUS.jsonl"),
        (("summary", "runs/ours", "--arch", "seed"), "a run directory or --arch and --vocab, not both"),
        (("corpus", "import", "poems.txt", "-o", "."), "no file name in '.'; give one like corpus.jsonl"),
        (("corpus", "import", "poems.txt", "-o", "poems/"), "no file name in 'poems/'; give one like corpus.jsonl"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, capfd, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_here(capfd, *args)
    assert code == 2 and message in err and err.count("\n") == 1



@pytest.mark.parametrize("args, line", [
    # An unknown option pointed to neuralda's list of commands, not to the command's options.
    (("generate", "runs/x", "--tempurature", "1"),
     "unrecognized arguments: --tempurature 1 (see neuralda generate --help)"),
    (("corpus", "stats", "poems.jsonl", "--jsn"), "unrecognized arguments: --jsn (see neuralda corpus stats --help)"),
    # An option before the command: argparse said a COMMAND was required.
    (("--top-p", "2", "generate", "runs/x"), "--top-p: a command comes first, then its options (neuralda COMMAND "
     "[OPTIONS]) (see neuralda --help)"),
    (("generate", "poems.jsonl"), "poems.jsonl: a file, not a run directory (the folder `neuralda train -o` made)"),
    (("train", "poems.jsonl", "-o", "poems.jsonl"), "{tmp}/poems.jsonl is a file, not a folder"),  # named once
])
def test_errors_name_what_is_wrong_once(tmp_path, monkeypatch, capfd, args, line):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "poems.jsonl").write_text('{"text": "a line"}\n')
    code, _, err = cli_here(capfd, *args)
    assert (code, err) == (2, f"neuralda: error: {line.format(tmp=tmp_path)}\n")

def test_an_error_in_a_process_of_its_own_is_one_line_and_exit_2(tmp_path):
    out = cli("train", "missing.jsonl", "-o", "out", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("neuralda: error: ") and out.stderr.count("\n") == 1
    assert "no such file" in out.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command",
    [
        ("train", "poems.jsonl", "-o", ""),  # trained into the current folder
        ("demo", "-o", "", "--minutes", "0.01"),  # scraped into '-corpus.jsonl' there, then refused the folder
        ("corpus", "import", "poems.jsonl", "-o", ""),
        ("corpus", "stats", ""),
        ("scrape", "--preset", "demo", "-o", "c.jsonl", "--cache", ""),  # the default cache, silently
        ("generate", ""),
        ("compare", "", "--samples", "0"),
        ("report", "", "-o", "post.md"),
        ("report", "run", "-o", "post.md", "--html", ""),  # wrote no page, silently
        ("evaluate", "run", "--corpus", ""),  # measured the run's own held-out poems
        ("serve", ""),
    ],
)
def test_an_empty_file_or_folder_name_is_a_one_line_error(tmp_path, command):
    """An empty name is the current folder to the OS: commands wrote there or measured it, or fell back silently."""
    (tmp_path / "poems.jsonl").write_text("".join(json.dumps({"text": f"rain {i}\nstone"}) + "\n" for i in range(20)))
    out = cli(*command, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "an empty name; give a file or folder" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poems.jsonl"]


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
    # Past 2^63 numbers in one matrix even shapes cannot be held: one line, not torch's traceback.
    out = cli("summary", "--arch", "seed", "--vocab", 2**63 - 1)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "overflowed" in out.stderr, out.stderr


def test_out_of_memory_is_one_line_and_exit_2(tmp_path, corpus_file):
    # hidden 10**8: one LSTM matrix is 160 PB, past any machine's address space: refused at once, never half-allocated.
    out = cli("train", corpus_file, "-o", tmp_path / "r", "--hidden", 10**8, "--epochs", 1, "-q")
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
        (("--save-at", "200,0"), "argument --save-at: epochs must be at least 1"),
        (("--weight-decay", "-1"), "--weight-decay must be a number from 0 to 1e+06, got -1.0"),
        (("--lr", "nan"), "--lr must be a number above 0, at most 1e+06, got nan"),
        (("--lr", "0"), "--lr must be a number above 0, at most 1e+06, got 0.0"),
        (("--lr", "1e39"), "--lr must be a number above 0, at most 1e+06, got 1e+39"),  # Adam's step overflowed
        (("--dropout", "1"), "--dropout must be in [0, 1), got 1.0"),
        (("--unk-rate", "1.5"), "--unk-rate must be in [0, 1], got 1.5"),
    ],
)
def test_bad_option_values_are_one_line_and_exit_2(tmp_path, corpus_file, capfd, option, message):
    code, _, err = cli_here(capfd, "train", corpus_file, "-o", tmp_path / "r", *option)
    assert code == 2 and err.startswith("neuralda: error: ") and err.count("\n") == 1
    assert message in err and not (tmp_path / "r").exists()  # nothing half-made to block the next try


def test_a_foreign_config_json_is_not_a_run(tmp_path, tiny_run):
    folder = tmp_path / "webapp"
    folder.mkdir()
    shutil.copy(tiny_run / "vocab.json", folder / "vocab.json")
    (folder / "config.json").write_text('{"name": "webapp", "hidden": 64}')
    out = cli("summary", folder)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"{folder / 'config.json'}: not a neuralda run configuration (missing arch, layers, dropout)" in out.stderr


@pytest.mark.parametrize("minutes", ["0", "nan", "-1", "inf"])
def test_demo_needs_a_time_limit_above_0(tmp_path, capfd, minutes):
    # Refused before the demo scrapes or trains: 0 once meant training with no time limit at all.
    code, _, err = cli_here(capfd, "demo", "--minutes", minutes, "-o", tmp_path / "runs" / "demo", "-q")
    assert code == 2 and err.count("\n") == 1
    assert f"--minutes must be a number above 0, got {minutes}" in err
    assert not (tmp_path / "runs").exists()


def test_demo_scrapes_the_local_site_trains_and_writes(tmp_path, monkeypatch):
    # Its folder a link to one elsewhere (another disk, say): the first demo put a folder in the link's place, left
    # the link aside, and each demo after it failed once it had trained. The link's name has a byte that is not
    # UTF-8, which the poem's heading printed to a strict UTF-8 stdout as a traceback once the demo had trained.
    run = tmp_path / "runs" / "demo\udcff"
    (tmp_path / "runs" / "disk").mkdir(parents=True)
    run.symlink_to(tmp_path / "runs" / "disk")
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    out = cli("demo", "--minutes", "0.15", "-o", run, "--seed", 1, "-q")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f'A poem from "love" ({tmp_path / "runs" / "demo"}\ufffd, best checkpoint)' in out.stdout
    assert "wrote 117 poems" in out.stderr and "127.0.0.1" in out.stderr
    assert 'A poem from "love"' in out.stdout
    # As this user runs neuralda (python -m here): `make demo` has no venv activated, so no `neuralda` on PATH.
    assert f"Write more: {shlex.quote(sys.executable)} -m neuralda generate " in out.stderr
    poem = out.stdout.split("best checkpoint):", 1)[1].strip()
    # A poem of its own after "love": how long depends on how many epochs a busy machine fits in 9 s (it may end
    # itself after a few words).
    assert poem.startswith("love") and len(poem.split()) > 1
    corpus = tmp_path / "runs" / "demo\udcff-corpus.jsonl"  # the run's name, then -corpus.jsonl
    scraped = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert len(scraped) == 117 and all(p["url"].startswith("http://127.0.0.1:") for p in scraped)
    # A second demo killed while it trains leaves the first one's run as it was.
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    killed = subprocess.Popen([sys.executable, "-m", "neuralda", "demo", "--minutes", "1", "-o", run, "-q"],
                              stderr=subprocess.PIPE, text=True)
    for line in killed.stderr:
        if "training the default model" in line:
            time.sleep(1.0)
            break
    killed.kill()
    killed.communicate(timeout=30)
    # It said what it would replace; the first said nothing of the kind.
    assert "; it replaces the last demo run in " in line and "replaces" not in out.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # A demo replaces its own run, also one killed before its config.json was written (by an earlier version, which
    # trained in place), keeps its corpus, and leaves nothing aside; it never touches another run.
    shutil.rmtree(run / "checkpoints")
    for name in ("config.json", "metrics.jsonl", "samples.jsonl"):
        (run / name).unlink()
    again = cli("demo", "--minutes", "0.1", "-o", run, "-q")
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(corpus.read_text().splitlines()) == 117
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run.name, corpus.name, "disk"]
    assert json.loads((run / "config.json").read_text())["output"] == str(run)
    assert run.is_symlink() and (tmp_path / "runs" / "disk" / "config.json").exists()


def test_demo_never_replaces_a_corpus_of_the_user_s_named_as_its_own(tmp_path, capfd):
    mine = tmp_path / "neruda-corpus.jsonl"
    mine.write_text('{"text": "my poem", "url": "https://example.org/poem"}\n{"text": "another"}\n')
    before = mine.read_bytes()
    code, _, err = cli_here(capfd, "demo", "--minutes", "0.1", "-o", tmp_path / "neruda", "-q")
    assert code == 2 and err.count("\n") == 1 and "did not scrape" in err, err
    assert mine.read_bytes() == before and not (tmp_path / "neruda").exists()


@pytest.mark.parametrize("mine", ["vocab.json", "data/train.jsonl"])
def test_demo_never_replaces_files_of_the_user_s_in_its_run_folder(tmp_path, capfd, mine):
    # A folder without config.json: the demo resumes a run of its own killed early, never takes over a user's files.
    path = tmp_path / "neruda" / mine
    path.parent.mkdir(parents=True)
    path.write_text('{"text": "my own", "url": "https://example.org/poem"}\n')
    before = path.read_bytes()
    code, _, err = cli_here(capfd, "demo", "--minutes", "0.1", "-o", tmp_path / "neruda", "-q")
    assert code == 2 and err.count("\n") == 1 and "not the demo's run" in err, err
    assert path.read_bytes() == before


@pytest.mark.parametrize("config", [b"[1, 2]\n", b'{"name": "app", // a comment\n}\n', b'{"name": "caf\xe9"}\n'])
def test_demo_never_replaces_a_folder_whose_config_json_is_not_a_run_s(tmp_path, capfd, config):
    # A web app's config.json (a list, JSON with comments, Latin-1): a traceback, not the one-line refusal.
    path = tmp_path / "app" / "config.json"
    path.parent.mkdir()
    path.write_bytes(config)
    code, _, err = cli_here(capfd, "demo", "--minutes", "0.1", "-o", tmp_path / "app", "-q")
    assert code == 2 and err.count("\n") == 1 and "not the demo's" in err, err
    assert path.read_bytes() == config and not (tmp_path / "app-corpus.jsonl").exists()


@pytest.mark.parametrize("with_run", [False, True], ids=["folder", "demo-run"])
def test_demo_never_deletes_other_files_in_its_run_folder(tmp_path, capfd, with_run):
    """The demo's run replaces its folder whole: a thesis and photos beside it were deleted (exit 0)."""
    folder = tmp_path / "proj"
    (folder / "photos").mkdir(parents=True)
    (folder / "thesis.txt").write_text("important\n")
    (folder / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # a file browser's, in any folder it showed: not named
    if with_run:  # the demo's own run, with the user's files added
        (folder / "config.json").write_text(json.dumps({"corpus": str(tmp_path / "proj-corpus.jsonl")}))
    code, _, err = cli_here(capfd, "demo", "--minutes", "0.1", "-o", folder, "-q")
    assert code == 2 and err.count("\n") == 1, err
    assert "holds files that are not a run's (photos, thesis.txt); choose another -o" in err
    assert (folder / "thesis.txt").read_text() == "important\n" and (folder / "photos" / "a.jpg").exists()
    assert not (tmp_path / "proj-corpus.jsonl").exists()  # refused before it scraped


def test_demo_refuses_a_run_another_process_is_using(tmp_path, tiny_run):
    """A `train` of the last demo's run, still running, wrote its epochs into the new demo's run that took its
    place (epochs 1, 2, then 41 on), both exiting 0: the demo takes the run's lock first, as `train` does."""
    from neuralda.files import folder_lock

    folder = shutil.copytree(tiny_run, tmp_path / "demo")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "corpus": str(tmp_path / "demo-corpus.jsonl")}))
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with folder_lock(folder):
        out = cli("demo", "--minutes", "0.1", "-o", folder, "-q", timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "another neuralda process is using this run" in out.stderr
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # nothing scraped, nothing trained beside it


@pytest.mark.parametrize("output", [".", ".."])
def test_demo_never_takes_the_current_folder_for_its_run(tmp_path, capfd, monkeypatch, output):
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = cli_here(capfd, "demo", "--minutes", "0.1", "-o", output, "-q")
    assert code == 2 and err.count("\n") == 1, err
    assert "is the current folder or one above it" in err
    assert list(tmp_path.iterdir()) == [here] and not list(here.iterdir())


def test_an_error_naming_a_file_with_a_newline_in_its_name_is_one_line(tmp_path):
    out = cli("generate", tmp_path / "no\nsuch\x1b[2J")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "no\\nsuch\\x1b[2J" in out.stderr and "\x1b" not in out.stderr


def test_a_bad_argument_or_a_warning_naming_a_newline_is_one_line(monkeypatch, capsys):
    import warnings

    import neuralda.cli
    from neuralda.cli import main
    from neuralda.errors import NeuraldaWarning

    out = cli("evaluate", "run", "extra\nline\x1b[2J")  # argparse's own error
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "extra\\nline\\x1b[2J" in out.stderr, out.stderr
    monkeypatch.setattr(neuralda.cli, "cmd_summary", lambda args: warnings.warn("w\nx.jsonl:2: torn", NeuraldaWarning))
    assert main(["summary"]) == 0
    assert capsys.readouterr().err == "neuralda: warning: w\\nx.jsonl:2: torn\n"


@pytest.mark.parametrize("command", [("demo", "-o", "d", "-q"), ("corpus", "stats", "c.jsonl")])
def test_out_of_memory_names_no_flag_a_command_has_not(tmp_path, monkeypatch, capsys, command):
    """The demo and the corpus commands were told to try --hidden, --layers, --batch-size or --seq-len."""
    import neuralda.corpus
    import neuralda.train  # noqa: F401  imported before the patch: it binds read_corpus by name
    from neuralda.cli import main

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(neuralda.corpus, "read_corpus", out_of_memory)
    assert main(list(command)) == 2
    assert capsys.readouterr().err == "neuralda: error: out of memory; close other programs, or run it on a machine " \
        "with more memory\n"
    assert list(tmp_path.iterdir()) == []  # the demo's folder, made for it, is gone again


def test_out_of_memory_names_the_flags_of_the_command_run(tiny_run):
    out = cli("evaluate", tiny_run, "--samples", sys.maxsize)  # it said to try --n, a flag evaluate has not
    assert out.returncode == 2 and out.stderr == "neuralda: error: out of memory; try fewer --samples\n"


def test_resume_given_a_bad_corpus_for_a_run_never_started_is_its_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    out = cli("train", bad, "-o", tmp_path / "new", "--resume", "-q")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr  # "holds no run yet: starting it" first
    assert "bad.jsonl" in out.stderr and "no run yet" not in out.stderr


def test_demo_refuses_an_output_that_is_a_file_before_it_scrapes(tmp_path, capfd):
    # It scraped 117 poems beside the file, said the file held "no run yet (killed before it was written)", then failed.
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    code, _, err = cli_here(capfd, "demo", "--minutes", "0.1", "-o", notes, "-q")
    assert code == 2
    assert err == f"neuralda: error: {notes} is a file, not a folder; choose another -o\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and notes.read_text() == "my notes\n"


@pytest.mark.parametrize(
    "failure, error",
    [
        (None, "summary needs a run directory, or --arch and --vocab"),
        (OSError(errno.EISDIR, "Is a directory", "run/config.json"), "run/config.json: Is a directory"),
        (MemoryError(), "out of memory; close other programs"),  # every rank had a line of each of these two
    ],
    ids=["neuralda", "os", "memory"],
)
@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_under_torchrun_rank_0_alone_prints_an_error(monkeypatch, capsys, rank, shown, failure, error):
    import neuralda.cli
    from neuralda.cli import main

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(neuralda.cli, "OTHER_RANKS_WAIT", 0.0)
    if failure is not None:
        def cmd_summary(args):
            raise failure

        monkeypatch.setattr(neuralda.cli, "cmd_summary", cmd_summary)
    assert main(["summary"]) == 2
    err = capsys.readouterr().err
    assert (err.startswith(f"neuralda: error: {error}") and err.count("\n") == 1) if shown else err == ""


def test_json_for_other_programs_has_null_for_an_overflowing_measure():
    # compare --json gives a list of rows: an infinite perplexity inside one was Infinity, which JSON has not.
    from neuralda.cli import _json

    rows = [{"run": "a", "perplexity": math.inf, "shares": [math.nan, 0.5]}]
    assert json.loads(_json(rows)) == [{"run": "a", "perplexity": None, "shares": [None, 0.5]}]
    assert "Infinity" not in _json(rows) and "NaN" not in _json(rows)


def test_quiet_train_shows_no_progress(tmp_path, corpus_file, capsys):
    from neuralda.cli import main

    args = ["--epochs", "2", "--hidden", "8", "--layers", "1", "--batch-size", "8", "--seq-len", "8"]
    assert main(["train", str(corpus_file), "-o", str(tmp_path / "loud"), *args]) == 0
    assert "epoch 2/2" in capsys.readouterr().err
    assert main(["train", str(corpus_file), "-o", str(tmp_path / "quiet"), *args, "-q"]) == 0
    assert "epoch 1/2" not in capsys.readouterr().err


def test_counts_at_their_limits_are_taken():
    from neuralda.cli import build_parser

    args = build_parser().parse_args(["train", "c.jsonl", "-o", "r", "--epochs", "1", "--patience", "0"])
    assert (args.epochs, args.patience) == (1, 0)
    assert build_parser().parse_args(["generate", "r", "--n", str(sys.maxsize)]).n == sys.maxsize
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "r", "--n", str(sys.maxsize + 1)])


def test_demo_never_takes_over_a_split_half_of_which_is_the_user_s(tmp_path, capfd):
    data = tmp_path / "neruda" / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"text": "scraped", "url": "http://127.0.0.1:8000/p/1"}\n')
    (data / "val.jsonl").write_text('{"text": "my own", "url": "https://example.org/poem"}\n')
    code, _, err = cli_here(capfd, "demo", "--minutes", "0.1", "-o", tmp_path / "neruda", "-q")
    assert code == 2 and "not the demo's run" in err, err
    assert (data / "val.jsonl").read_text() == '{"text": "my own", "url": "https://example.org/poem"}\n'


def option_help(command: str, option: str) -> str:
    """The help text of ``option`` in ``neuralda COMMAND --help``, on one line."""
    from neuralda.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices[command].format_help()
    block = text[text.index(f"  {option}") :]
    return " ".join(re.split(r"\n  -", block[2:])[0].split())


def shown_default(command: str, option: str) -> str:
    match = re.search(r"default:? ([^\s,;:)]+)", option_help(command, option))
    assert match, option_help(command, option)
    return match.group(1)


def test_every_option_and_argument_has_help():
    from neuralda.cli import build_parser

    def bare(parser: argparse.ArgumentParser, command: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from bare(sub, f"{command} {name}")
            elif not action.help:
                yield f"{command} {'/'.join(action.option_strings) or action.metavar or action.dest}"

    assert list(bare(build_parser(), "neuralda")) == []


def test_summary_help_gives_the_sizes_it_counts():
    from neuralda.models import default_size

    assert all("100,000 tokens" in option_help("summary", option) for option in ("--hidden", "--layers"))
    out = cli("summary", "--arch", "lstm", "--vocab", "5437")
    hidden, layers = default_size("lstm", 100_000)
    assert out.stdout.count(f"(None, None, {hidden})") == layers + 1, out.stdout  # the embedding and each LSTM


def test_help_shows_the_code_s_defaults():
    from neuralda.evaluate import measure_checkpoints
    from neuralda.generate import SamplingConfig
    from neuralda.report import write_report
    from neuralda.scrape import ScrapeConfig
    from neuralda.serve import serve
    from neuralda.train import DEFAULTS, SAVE_EVERY

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    numbers = [
        ("generate", "--temperature", SamplingConfig().temperature),
        ("generate", "--top-p", SamplingConfig().top_p),
        ("generate", "--top-k", SamplingConfig().top_k),
        ("generate", "--repetition-penalty", SamplingConfig().repetition_penalty),
        ("serve", "--port", default(serve, "port")),
        ("evaluate", "--samples", default(measure_checkpoints, "samples")),
        ("compare", "--samples", default(measure_checkpoints, "samples")),
        ("report", "--samples", default(write_report, "samples")),
        ("scrape", "--timeout", ScrapeConfig.timeout),
        ("scrape", "--delay", ScrapeConfig.delay),
        ("scrape", "--retries", ScrapeConfig.retries),
        ("train", "--val-fraction", DEFAULTS["val_fraction"]),
        ("train", "--seed", DEFAULTS["seed"]),
        ("train", "--min-count", DEFAULTS["min_count"]),
    ]
    for command, option, value in numbers:
        assert float(shown_default(command, option)) == value, (command, option)
    assert shown_default("serve", "--host") == default(serve, "host")
    assert shown_default("train", "--arch") == DEFAULTS["arch"]
    assert shown_default("train", "--precision") == DEFAULTS["precision"]
    assert shown_default("train", "--save-every") == f"{SAVE_EVERY:g}s"
    assert "off" in option_help("generate", "--top-k") and "none" in option_help("generate", "--repetition-penalty")
    assert ScrapeConfig.max_poems is None and "default: no limit" in option_help("scrape", "--max-poems")


@pytest.mark.parametrize("option", ["--epochs", "--patience", "--batch-size", "--seq-len", "--lr", "--dropout",
                                    "--weight-decay", "--unk-rate", "--save-at"])
def test_train_help_shows_each_architecture_s_recipe(option):
    from neuralda.models import RECIPES

    shown = option_help("train", option)
    for arch, recipe in RECIPES.items():
        value = getattr(recipe, option[2:].replace("-", "_"))
        value = (",".join(map(str, value)) or "none") if isinstance(value, tuple) else f"{value:g}"
        assert f"{arch} {value}" in shown, shown


@pytest.fixture
def script(tmp_path, monkeypatch):
    """An installed-looking ``bin/neuralda`` script, running, from ``tmp_path``."""
    path = tmp_path / "bin" / "neuralda"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(path), "demo"])
    return path


def test_hint_says_neuralda_when_it_is_on_path(script, monkeypatch):
    from neuralda.cli import _command

    monkeypatch.setenv("PATH", str(script.parent))
    assert _command() == "neuralda"


@pytest.mark.parametrize("path", ["", "other"])
def test_hint_gives_the_script_s_path_when_path_finds_none_or_another(script, monkeypatch, tmp_path, path):
    # `make demo` runs .venv/bin/neuralda with the venv not activated.
    from neuralda.cli import _command

    if path:
        shutil.copytree(script.parent, tmp_path / path)
    monkeypatch.setenv("PATH", str(tmp_path / path) if path else "/nonexistent")
    assert _command() == os.path.join("bin", "neuralda")
    monkeypatch.chdir(script.parent)
    assert _command() == os.path.join(".", "neuralda")


def test_hint_under_python_m_names_the_interpreter(monkeypatch):
    from neuralda.cli import _command

    monkeypatch.setattr(sys, "argv", [importlib.util.find_spec("neuralda.__main__").origin])
    assert _command() == f"{shlex.quote(sys.executable)} -m neuralda"


def test_generate_warns_of_an_untrained_checkpoint(tmp_path, tiny_run):
    from neuralda.run import Run, model_tensors, save_checkpoint

    for checkpoint in ("best", "last"):  # trained
        out = cli("generate", tiny_run, "--checkpoint", checkpoint, "--n", 1, "--words", 10, "--seed", 1)
        assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    # A run killed before its first epoch was saved: train's own first `last` holds epoch 0.
    run = Run.open(shutil.copytree(tiny_run, tmp_path / "run"))
    save_checkpoint(run.checkpoint_path("last"), model_tensors(run.build_model()), {"epoch": 0, "arch": "lstm"})
    out = cli("generate", run.path, "--checkpoint", "last", "--n", 1, "--words", 10, "--seed", 1)
    assert out.returncode == 0 and out.stdout.startswith("love"), out.stderr
    assert out.stderr == "neuralda: warning: checkpoint 'last' holds epoch 0: untrained weights\n"


def test_a_model_without_love_writes_measures_and_reports_from_anywhere(tmp_path, capsys):
    """Every command's default start is "love" only where the model knows it (a Spanish poet's model does not)."""
    from neuralda.cli import main

    lines = ["la luna cae sobre el agua", "¿dónde duerme el viento?", "el pan y la sal de la mañana", "¡ay, mi niña!"]
    rows = [{"text": "\n".join(lines[i % 4 :] + lines[: i % 4])} for i in range(30)]
    (tmp_path / "es.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    run = tmp_path / "es"
    args = ["--epochs", "1", "--hidden", "16", "--layers", "1", "--batch-size", "8", "-q"]
    assert main(["train", str(tmp_path / "es.jsonl"), "-o", str(run), *args]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--seed", "1", "--words", "8", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["start"] == ""
    assert main(["evaluate", str(run), "--samples", "2", "--words", "8"]) == 0
    assert main(["report", str(run), "-o", str(tmp_path / "post.md"), "--samples", "2", "--words", "8"]) == 0
    assert "Poems begin where the model likes." in (tmp_path / "post.md").read_text()


def test_an_output_encoding_without_the_poems_letters_is_one_line(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "café über niño"}\n', encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    out = subprocess.run(
        [sys.executable, "-m", "neuralda", "corpus", "stats", str(corpus)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("neuralda: error: ") and out.stderr.count("\n") == 1 and "PYTHONIOENCODING" in out.stderr
@pytest.mark.parametrize("args", [("generate", "run", "--n"), ("evaluate", "run", "--samples")])
def test_a_count_too_big_for_the_machine_is_one_line(args, capsys):
    from neuralda.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*args, "99999999999999999999"])
    assert exit_.value.code == 2 and "must be at most" in capsys.readouterr().err


@pytest.mark.parametrize("args", ["summary --arch seed --vocab 10", "scrape --list-presets", "generate no-such-run"])
def test_a_closed_output_is_one_line_not_poems_lost_in_silence(args):
    # `generate ... >&-`: Python's sys.stdout is None, and print() to it wrote nothing and exited 0.
    command = f"{shlex.quote(sys.executable)} -m neuralda {args} >&-"
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "stdout) is closed" in out.stderr, out.stderr


@pytest.mark.parametrize("content", [b"My only poem, typed on one line", b'{"text": "a", "url": "http://[::1"}\n'])
def test_a_file_the_demo_did_not_scrape_is_never_taken_for_its_own(tmp_path, content):
    from neuralda.cli import _scraped_from_this_machine

    (tmp_path / "demo-corpus.jsonl").write_bytes(content)
    assert not _scraped_from_this_machine(tmp_path / "demo-corpus.jsonl")


def test_a_start_word_that_is_not_utf_8_is_written_as_u_fffd_in_json_and_markdown(tiny_run, tmp_path):
    """A corpus with damaged text has U+FFFD in its vocabulary, which a byte that is not UTF-8 on the command line
    reaches: generate wrote that byte raw into its JSON (invalid UTF-8) and its Markdown heading (a traceback where
    stdout is strict UTF-8), and report failed after writing its plot."""
    run = shutil.copytree(tiny_run, tmp_path / "damaged")
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    vocab["tokens"][vocab["tokens"].index("harvest")] = "\ufffd"
    (run / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    start = "love \udcff"  # how Python reads the byte 0xFF from the command line
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    for fmt in ("json", "markdown"):
        out = subprocess.run([sys.executable, "-m", "neuralda", "generate", str(run), "--start", start, "--seed", "1",
                              "--words", "8", "--format", fmt], capture_output=True, env=env)
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode("utf-8")  # strict: valid UTF-8
        assert (json.loads(text)[0]["start"] == "love \ufffd") if fmt == "json" else text.startswith("### love \ufffd")
    out = subprocess.run([sys.executable, "-m", "neuralda", "report", str(run), "-o", str(tmp_path / "post.md"),
                          "--start", start, "--samples", "1", "--words", "8"], capture_output=True, env=env)
    assert out.returncode == 0, out.stderr
    assert 'Poems begin with "love \ufffd".' in (tmp_path / "post.md").read_text(encoding="utf-8")
