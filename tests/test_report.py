import html
import json
import math
import re
import shutil
import subprocess
import sys

import pytest

from neuralda.cli import main
from neuralda.errors import NeuraldaError
from neuralda.evaluate import evaluate_run
from neuralda.report import report_paths, write_report


def test_report_structure_plot_and_numbers(tiny_run, tmp_path):
    out = tmp_path / "post" / "my report.md"  # a space: the image link must still work
    out.parent.mkdir()
    entries = write_report([str(tiny_run)], out, tmp_path / "report.html", samples=4, seed=2, words=12)
    text = out.read_text()
    # The poems of the saved epochs side by side (the seed compares 200 and 400; this run saved 2 and 4), in epoch
    # order, and the model's summary.
    assert re.findall(r'<div class="who">(.*?)</div>', text) == [
        "run<br>After 2 training epochs", "run<br>After 4 training epochs"
    ]
    assert re.findall(r"<summary>(.*?)</summary>", text) == ["Model summary"] and "Total params:" in text
    # Poems keep their lines: every line break is a <br> inside a <p> per stanza.
    for entry in entries:
        assert "<br>\n".join(html.escape(ln, quote=False) for ln in entry.poem.split("\n\n")[0].split("\n")) in text
    plot = out.parent / "my report-perplexity.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Training and held-out perplexity per epoch](my%20report-perplexity.png)" in text
    # The table's numbers are evaluate's, for poems of the words asked for.
    row = evaluate_run(tiny_run, "epoch-4", samples=4, seed=2, words=12)
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines() if ln.startswith("| ")]
    cells = next(r for r in rows if r[1] == "epoch-4")
    assert cells[3] == f"{row['perplexity']:.1f}" and cells[6] == f"{row['oov_rate']:.1%}"
    assert cells[8] == f"{row['copied_6gram_share']:.1%}"
    assert cells[10] == str(row["longest_copy"])
    assert cells[11] == f"{row['distinct_2']:.3f}"
    # Poems of the default length differ here, so a report that ignored `words` would fail the line above.
    assert cells[11] != f"{evaluate_run(tiny_run, 'epoch-4', samples=4, seed=2)['distinct_2']:.3f}"
    page = (tmp_path / "report.html").read_text()
    assert page.count("<details>") == 1 and "data:image/png;base64," in page
    assert re.findall(r'<table class="poems">.*?</table>', page, re.S) == re.findall(
        r'<table class="poems">.*?</table>', text, re.S)


@pytest.mark.parametrize("n, rows", [(1, [1]), (2, [2]), (3, [3]), (4, [2, 2]), (7, [2, 2, 3])])
def test_poems_stand_side_by_side_at_most_three_to_a_table(tiny_run, n, rows):
    """In a blog post the seed's poems after 200 and 400 epochs, and ours, are read beside each other."""
    from neuralda.report import Entry, markdown
    from neuralda.run import Run

    run = Run.open(tiny_run)
    entries = [Entry(run, f"epoch-{i}", i, f"After {i} training epochs", f"poem {i}\nline", {}) for i in range(n)]
    text = markdown([run], entries, "t", None, "")
    tables = re.findall(r'<table class="poems">.*?</table>', text, re.S)
    assert [t.count("<td") for t in tables] == rows and all("\n\n" not in t for t in tables)  # one HTML block each
    poems = [p for t in tables for p in re.findall(r'<p dir="auto">(.*?)</p>', t, re.S)]
    assert poems == [f"poem {i}<br>\nline" for i in range(n)]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "neuralda", *map(str, args)], capture_output=True, text=True)


def test_evaluate_json_has_the_flat_measures(tiny_run):
    out = cli("evaluate", tiny_run, "--samples", 3, "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    for key in ("perplexity", "perplexity_per_word", "bits_per_char", "oov_rate", "copied_4gram_share",
                "copied_6gram_share", "copied_8gram_share", "longest_copy", "distinct_1", "distinct_2",
                "ended_share", "tokens", "samples"):
        assert key in row, key
    assert row["samples"] == 3


def test_compare_prints_a_row_per_checkpoint(tiny_run):
    out = cli("compare", f"{tiny_run}:epoch-2", f"{tiny_run}:epoch-4", "--samples", 2)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[1].startswith(f"{tiny_run}:epoch-2") and lines[2].startswith(f"{tiny_run}:epoch-4")


def test_compare_and_report_measure_on_another_corpus(tiny_run, tmp_path):
    """As evaluate does: a run trained with --val-fraction 0 has no held-out poems of its own."""
    corpus = tiny_run / "data" / "train.jsonl"
    out = cli("compare", tiny_run, "--corpus", corpus, "--samples", 0, "--json")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert row["corpus"] == str(corpus) and row["distinct_2"] is None  # no poems: nothing to measure, not 0
    assert row["perplexity"] == evaluate_run(tiny_run, corpus=corpus, samples=0)["perplexity"]
    out = cli("report", tiny_run, "-o", tmp_path / "r.md", "--corpus", corpus, "--samples", 1, "--words", 5)
    assert out.returncode == 0, out.stderr
    cells = next(ln for ln in (tmp_path / "r.md").read_text().splitlines() if "| epoch-4 |" in ln)
    assert f"| {evaluate_run(tiny_run, 'epoch-4', corpus=corpus, samples=0)['perplexity']:.1f} |" in cells
    # Poems the run trained on are no held-out poems: the rows and the report say so; the run's own held-out poems,
    # given as a file, are none of them.
    assert row["poems_trained_on"] == 1.0 and "trained on 100% of the poems scored" in (tmp_path / "r.md").read_text()
    out = cli("compare", tiny_run, "--corpus", corpus, "--samples", 0)
    assert f"note: {tiny_run} trained on 100% of the poems scored: perplexity there says how well" in out.stdout
    assert evaluate_run(tiny_run, corpus=tiny_run / "data" / "val.jsonl", samples=0)["poems_trained_on"] == 0


def test_an_empty_file_name_from_python_is_an_error_not_the_default(tiny_run):
    """The CLI refuses '' for any file; from Python, '' is no page and no corpus rather than none given."""
    for page in ("", None):
        with pytest.raises(NeuraldaError, match="no file name in ''"):
            report_paths("" if page is None else "post.md", page, force=False)
    with pytest.raises(NeuraldaError, match="an empty corpus file name"):
        evaluate_run(tiny_run, corpus="", samples=0)


def test_json_output_has_no_infinity():
    from neuralda.cli import _json

    assert json.loads(_json([{"ppl": math.inf, "x": [math.nan, 1.5]}])) == [{"ppl": None, "x": [None, 1.5]}]


def test_report_of_a_missing_run_is_one_line(tmp_path):
    out = cli("report", tmp_path / "nope", "-o", tmp_path / "r.md")
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def report_in_process(tmp_path, monkeypatch, *args):
    """``neuralda report`` run here, failing the test if it gets as far as writing a poem."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("neuralda.report.collect", lambda *a: pytest.fail("the report was evaluated first"))
    return main(["report", *map(str, args)])


@pytest.mark.parametrize("existing", ["post.md", "post-perplexity.png", "post.html"])
def test_report_keeps_existing_files_unless_forced(tiny_run, tmp_path, monkeypatch, capsys, existing):
    (tmp_path / existing).write_text("mine")
    assert report_in_process(tmp_path, monkeypatch, tiny_run, "-o", "post.md", "--html", "post.html") == 2
    err = capsys.readouterr().err
    assert f"{existing} already exists" in err and "--force" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == [existing] and (tmp_path / existing).read_text() == "mine"
    (tmp_path / f".{existing}.a1b2c3d4.tmp").write_text("half of it")  # what a killed report left
    out = cli("report", tiny_run, "-o", tmp_path / "post.md", "--html", tmp_path / "post.html", "--samples", 1,
              "--force")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post-perplexity.png", "post.html", "post.md"]
    assert (tmp_path / "post.md").read_text().startswith("# Teaching")
    assert (tmp_path / "post-perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "post.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    "args, message",
    [
        (("-o", "."), "no file name in '.'"),
        (("-o", "somedir/"), "no file name in 'somedir/'"),
        (("-o", "somedir/."), "no file name in 'somedir/.'"),  # wrote a file named somedir
        (("-o", "somedir"), "somedir is a directory; give a file in it, like somedir/post.md"),
        (("-o", "post.md", "--html", "somedir"), "somedir is a directory"),
        (("-o", "notes.txt/post.md"), "notes.txt is a file, not a folder"),
        (("-o", "post.md", "--html", "post-perplexity.png"), "would write the same file"),
    ],
)
def test_report_outputs_that_cannot_be_files_are_one_line_errors(tiny_run, tmp_path, monkeypatch, capsys, args,
                                                                 message):
    (tmp_path / "somedir").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert report_in_process(tmp_path, monkeypatch, tiny_run, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "somedir"]  # no stray plot beside them
    assert not any((tmp_path / "somedir").iterdir())


@pytest.mark.parametrize("option", ["-o", "--html"])
def test_a_symlink_loop_as_an_output_is_no_traceback(tiny_run, tmp_path, monkeypatch, capsys, option):
    (tmp_path / "loop").symlink_to("loop")  # Path.resolve raised RuntimeError ("Symlink loop"), uncaught
    args = ("-o", "post.md", "--html", "loop") if option == "--html" else ("-o", "loop")
    monkeypatch.chdir(tmp_path)
    code = main(["report", str(tiny_run), *args, "--samples", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("neuralda: error: ") and err.count("\n") == 1, err


def test_a_link_as_output_has_its_plot_beside_the_file_it_points_to(tiny_run, tmp_path):
    (tmp_path / "blog").mkdir()
    (tmp_path / "blog" / "post.md").write_text("mine")
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "link.md").symlink_to("../blog/post.md")
    write_report([str(tiny_run)], tmp_path / "here" / "link.md", samples=0, words=5, force=True)
    assert "](post-perplexity.png)" in (tmp_path / "blog" / "post.md").read_text()
    assert (tmp_path / "blog" / "post-perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["link.md"]


def test_a_run_without_a_checkpoint_is_a_one_line_error_not_an_empty_report(tiny_run, tmp_path, capsys):
    run = tmp_path / "killed"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint
    assert main(["report", str(run), "-o", str(tmp_path / "post.md"), "--samples", "0"]) == 2
    assert "no checkpoint yet" in capsys.readouterr().err and not (tmp_path / "post.md").exists()


def test_report_refuses_runs_it_could_not_tell_apart(tiny_run, tmp_path):
    import shutil

    twin = tmp_path / "elsewhere" / tiny_run.name
    shutil.copytree(tiny_run, twin)
    with pytest.raises(NeuraldaError, match="same folder name"):
        write_report([str(tiny_run), str(twin)], tmp_path / "r.md", samples=1, words=5)
    assert not (tmp_path / "r.md").exists()


@pytest.mark.filterwarnings("error")  # matplotlib warned of a legend with nothing in it
def test_a_run_without_recorded_epochs_is_reported_without_a_plot(tiny_run, tmp_path):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "metrics.jsonl").unlink()  # a run whose metrics were lost, or written by another tool
    out = tmp_path / "post.md"
    write_report([str(run)], out, tmp_path / "post.html", samples=1, words=8)
    assert not (tmp_path / "post-perplexity.png").exists()
    assert "![" not in out.read_text() and "<img" not in (tmp_path / "post.html").read_text()
    assert "epoch-4" in out.read_text()


@pytest.mark.parametrize(
    "rows",
    [
        [{"epoch": 1, "val_ppl": "x", "train_ppl": None}],  # nothing to plot: the log scale must not be asked for
        [{"epoch": 10**400, "val_ppl": 50}, {"epoch": "1", "val_ppl": 50}, {"val_ppl": 50}],
        [{"epoch": 1, "val_ppl": 10**400, "train_ppl": [1]}, {"epoch": 2, "val_ppl": 30, "train_ppl": {"a": 1}}],
    ],
)
def test_the_plot_draws_odd_metrics_as_gaps(tiny_run, tmp_path, rows):
    import shutil

    from neuralda.report import plot_perplexity
    from neuralda.run import Run

    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_perplexity([Run.open(run)])
    assert png is None or png[:4] == b"\x89PNG"


def test_names_that_are_not_utf8_are_shown_with_a_replacement_character(tiny_run, tmp_path, monkeypatch):
    import os
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / os.fsdecode(b"r\xff"))
    monkeypatch.chdir(tmp_path)
    out = os.fsdecode(b"\xff.md")
    assert main(["report", str(run), "-o", out, "--html", "p.html", "--samples", "0", "--words", "5"]) == 0
    text = (tmp_path / out).read_text()
    assert "## r\ufffd" in text and "| r\ufffd | epoch-4 |" in text
    assert "(%FF-perplexity.png)" in text  # the file's own bytes, so the link finds it
    assert (tmp_path / os.fsdecode(b"\xff-perplexity.png")).read_bytes()[:4] == b"\x89PNG"
    assert "<h2>r\ufffd</h2>" in (tmp_path / "p.html").read_text()


@pytest.mark.parametrize("command", [["evaluate", "--json"], ["evaluate"], ["compare"]])
def test_evaluate_and_compare_print_names_that_are_not_utf8(tiny_run, tmp_path, capsys, command):
    import os

    run = shutil.copytree(tiny_run, tmp_path / os.fsdecode(b"r\xff"))
    corpus = shutil.copyfile(run / "data" / "val.jsonl", tmp_path / os.fsdecode(b"c\xff.jsonl"))
    args = [command[0], str(run), "--samples", "0", *command[1:]]
    assert main(args) == 0 and main([*args, "--corpus", str(corpus)]) == 0
    assert "r\ufffd" in capsys.readouterr().out


def test_a_title_and_start_are_said_as_they_read(tiny_run, tmp_path):
    write_report([str(tiny_run)], tmp_path / "r.md", title="Two\nlines", samples=1, words=5, start="   ")
    text = (tmp_path / "r.md").read_text()
    assert text.startswith("# Two lines\n") and "Poems begin where the model likes." in text


@pytest.mark.parametrize("value", [None, "x", "50", True, False, 0, -3, -0.5, math.inf, math.nan, 10**400, [1], {}])
def test_a_perplexity_that_is_not_a_positive_number_is_a_gap(value):
    from neuralda.report import plottable

    assert math.isnan(plottable(value))
    assert plottable(50) == 50.0 and plottable(0.5) == 0.5


# 1e308 is a float: a log axis's margins around it overflowed, and numpy's warning reached the terminal; beside
# usual perplexities 1e280 overflowed its ticks (a traceback) and 1e80 had its layout warn.
@pytest.mark.parametrize("key, value", [("train_ppl", 1e308), ("val_ppl", 1e280), ("val_ppl", 1e80)])
def test_a_perplexity_far_past_any_model_s_is_plotted_as_a_gap_without_a_warning(tiny_run, tmp_path, key, value):
    import warnings

    from neuralda.report import plottable

    run = shutil.copytree(tiny_run, tmp_path / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[0][key] = value
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["report", str(run), "-o", str(tmp_path / "r.md"), "--samples", "0", "--words", "5"]) == 0
    assert math.isnan(plottable(value)) and plottable(1e50) == 1e50 and plottable(1e-50) == 1e-50


def test_a_title_that_is_not_utf8_is_shown_with_a_replacement_character(tiny_run, tmp_path):
    import os

    write_report([str(tiny_run)], tmp_path / "r.md", title=os.fsdecode(b"caf\xe9"), samples=0, words=5)
    assert (tmp_path / "r.md").read_text().startswith("# caf\ufffd\n")


def test_a_run_with_saved_epochs_reports_its_best_model_too(tmp_path, corpus_file):
    from conftest import tiny_config

    from neuralda.report import report_checkpoints
    from neuralda.run import Run
    from neuralda.train import train

    result = train(tiny_config(corpus_file, tmp_path / "run", epochs=3, save_at=(1,)), log=lambda s: None)
    assert result.best_epoch > 1  # the loss still falls: the best is not the saved epoch
    assert report_checkpoints(Run.open(tmp_path / "run")) == ["epoch-1", "best"]
    entries = write_report([str(tmp_path / "run")], tmp_path / "post.md", samples=1, words=8)
    assert [e.label for e in entries] == ["After 1 training epoch", f"Best checkpoint (after {result.best_epoch} epochs)"]


def test_run_names_are_shown_as_written_in_markdown_and_the_plot(tiny_run, tmp_path):
    """"$" was mathtext to the plot (a traceback after all the evaluating), "_draft" was left out of its legend, and
    "|", "*", "<b>" split or restyled the Markdown."""
    import shutil

    names = ["x$\\q$", "_draft", "poet|with*stars_<b>&amp;"]
    runs = [shutil.copytree(tiny_run, tmp_path / name) for name in names]
    out = tmp_path / "post.md"
    write_report([str(r) for r in runs], out, samples=1, words=8)
    text = out.read_text()
    rows = [re.split(r"(?<!\\)\|", ln.strip())[1:-1] for ln in text.splitlines() if ln.startswith("| ")]
    assert {len(r) for r in rows} == {12}  # run, checkpoint and ten measures in every row
    assert "## poet\\|with\\*stars\\_&lt;b&gt;&amp;amp;" in text and "<b>" not in text
    assert "## \\_draft" in text


def test_a_run_given_as_dot_is_named_after_its_folder(tiny_run, monkeypatch):
    from neuralda.run import Run

    monkeypatch.chdir(tiny_run)
    assert Run.open(".").name == tiny_run.name


def saved_figures(monkeypatch) -> list:
    """The figures the report saves as PNG, in order (to look at their axes)."""
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kw: (figures.append(self), save(self, *args, **kw)))
    return figures


def test_a_plot_of_400_epochs_keeps_its_line_styles_and_readable_ticks(tiny_run, tmp_path, monkeypatch):
    """Markers at each of 400 epochs made the dashed training line solid like the held-out one, and labelling every
    2..9 of four decades piled the y-axis labels on one another (the seed's 400 epochs, memorising)."""
    import shutil

    from neuralda.report import plot_perplexity
    from neuralda.run import Run

    run = shutil.copytree(tiny_run, tmp_path / "seed")
    rows = [{"epoch": e, "train_ppl": 2000 * math.exp(-e / 40) + 1.3, "val_ppl": 500 + 4 * e, "best": e == 1}
            for e in range(1, 401)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = saved_figures(monkeypatch)
    plot_perplexity([Run.open(run)])
    ax = figures[0].axes[0]
    training = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
    assert training.get_marker() in (None, "None", "", " ")
    figures[0].canvas.draw()
    labels = [t.get_text() for t in ax.yaxis.get_ticklabels(minor=True) + ax.yaxis.get_ticklabels() if t.get_text()]
    assert len(labels) <= 8, labels


def test_a_run_whose_last_epoch_was_its_best_is_reported_once(tmp_path, corpus_file):
    """Without saved epochs the report showed "best" and "last": the same weights, row and poem twice."""
    from conftest import tiny_config

    from neuralda.report import report_checkpoints
    from neuralda.run import Run
    from neuralda.train import train

    result = train(tiny_config(corpus_file, tmp_path / "run", epochs=2, save_at=()), log=lambda s: None)
    assert result.best_epoch == 2  # the loss still falls: the last epoch is the best
    assert report_checkpoints(Run.open(tmp_path / "run")) == ["best"]


def test_poems_are_marked_in_the_language_most_training_poems_give(tiny_run, tmp_path):
    """The report speaks English; a Spanish poet's poems say lang="es" where most of its training poems did."""
    import shutil

    from neuralda.run import Run

    run = shutil.copytree(tiny_run, tmp_path / "poeta")
    train = run / "data" / "train.jsonl"
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    langs = ["es", "es", "fr"]  # two thirds Spanish

    def relabel(tags):
        lines = [json.dumps({**r, **({"lang": t} if t else {})}) for r, t in zip(rows, tags * len(rows))]
        train.write_text("\n".join(lines) + "\n", encoding="utf-8")

    relabel(langs)
    write_report([str(run)], tmp_path / "post.md", tmp_path / "post.html", samples=1, words=8)
    for name in ("post.md", "post.html"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        paragraphs = re.findall(r"<p[ >][^>]*>?", text)  # the poems' stanzas, and the page's note
        assert paragraphs.count('<p lang="es" dir="auto">') == len(paragraphs) - paragraphs.count('<p class="note">') > 0
    for tags in (["es", "fr"], ["es", None]):  # no language holds over half: none is claimed
        relabel(tags)
        assert Run.open(run).lang is None
    write_report([str(tiny_run)], tmp_path / "plain.md", samples=1, words=8)
    assert "lang=" not in (tmp_path / "plain.md").read_text(encoding="utf-8")


def test_the_table_poems_and_labels_render_as_written(tiny_run, tmp_path):
    """Without saved epochs a report shows best and last; without samples the copies are "-"; each stanza is a
    paragraph; and each poem is the one `generate --seed` writes from that checkpoint."""
    import shutil

    from neuralda.generate import SamplingConfig, write_poems
    from neuralda.run import Run

    run = shutil.copytree(tiny_run, tmp_path / "run")
    for saved in (run / "checkpoints").glob("epoch-*"):
        saved.unlink()
    shutil.copy(tiny_run / "checkpoints" / "epoch-2.safetensors", run / "checkpoints" / "best.safetensors")
    entries = write_report([str(run)], tmp_path / "post.md", tmp_path / "post.html", samples=0, seed=3, words=40)
    assert [e.label for e in entries] == ["Best checkpoint (after 2 epochs)", "Last checkpoint (after 4 epochs)"]
    text = (tmp_path / "post.md").read_text()
    lines = text.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| run |"))
    assert lines[header + 1].count("---") == lines[header].count("|") - 1  # else no table renders at all
    cells = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    assert cells[:2] == ["run", "best"] and cells[7:11] == ["-"] * 4 and cells[11] == "-"
    assert "<th>held\u2011out ppl</th>" in (tmp_path / "post.html").read_text()
    for entry in entries:
        model, _ = Run.open(run).load_model(entry.checkpoint)
        assert entry.poem == write_poems(model, Run.open(run).vocab, None, 40, 1, SamplingConfig(), 3)[0][0]
        for stanza in entry.poem.split("\n\n"):
            lines = "<br>\n".join(html.escape(ln, quote=False) for ln in stanza.split("\n"))
            assert f'<p dir="auto">{lines}</p>' in text


def test_poems_of_a_model_without_love_are_said_to_begin_anywhere(tiny_run, tmp_path):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "poeta")
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    vocab["tokens"] = ["amor" if t == "love" else t for t in vocab["tokens"]]
    (run / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    write_report([str(run)], tmp_path / "post.md", samples=0, words=5)
    assert "Poems begin where the model likes." in (tmp_path / "post.md").read_text()


def test_the_plot_is_log_scale_marks_saved_epochs_and_stars_the_trainer_s_best(tiny_run, tmp_path, monkeypatch):
    """The star is the epoch the trainer kept as best, not a later one a hair lower (under its 0.01% rule)."""
    import shutil

    from neuralda.report import plot_perplexity
    from neuralda.run import Run

    run = shutil.copytree(tiny_run, tmp_path / "run")
    rows = [{"epoch": e, "train_ppl": 60 - e, "val_ppl": v, "best": b}
            for e, v, b in [(1, 50.0, True), (2, 40.0, True), (3, 39.999, False), (4, 45.0, False)]]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = saved_figures(monkeypatch)
    plot_perplexity([Run.open(run)])
    ax = figures[0].axes[0]
    assert ax.get_yscale() == "log"
    saved = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")
    assert saved == [2, 4]
    assert any(label.endswith("best, epoch 2 (40)") for label in ax.get_legend_handles_labels()[1])


# What a poet, a corpus or a user may type that Markdown would read as markup (found rendering the outputs).
HOSTILE = [
    "*a* _b_ `c` ~~d~~ **e**", "<script>alert(1)</script>", "&amp; &lt; <!-- hidden", "</details> <b>bold</b>",
    "# a heading #", "> a quote", "1. a list", "2) a list", "- a list", "+ a list", "===", "---", "***", "```",
    "[x](javascript:alert(1))", "![i](x.png)", "a | b | c", "back\\slash\\", "{::comment}hidden{:/comment}",
    "$$x^2$$ \\(y\\)", "poem #",
]


def rendered(text: str) -> str:
    """``text`` as a CommonMark renderer with GitHub's tables and strikethrough shows it, as HTML."""
    markdown_it = pytest.importorskip("markdown_it", reason="rendering Markdown needs `pip install markdown-it-py`")
    return markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_text_shows_any_text_as_written(text):
    """Before, "~~d~~" struck through, a title's closing "#" vanished, and (in generate's Markdown) "<script>" ran,
    "# ", "> ", "1. " and "```" made headings, quotes, lists and code of a poem's lines."""
    from neuralda.report import markdown_poem, markdown_text

    for wrap, tag in (("{}", "p"), ("# {}", "h1"), ("| {} |\n|---|\n| {} |", "table")):
        shown = markdown_text(text)
        out = rendered(markdown_poem("", text).split("\n", 2)[2] if tag == "p" else wrap.format(shown, shown))
        if tag == "table":  # one column: neither "|" nor anything else split the row
            cells = re.findall(r"<t[hd]>(.*?)</t[hd]>", out)
            assert [html.unescape(c) for c in cells] == [text, text] and out.count("<tr>") == 2
        else:
            shown = re.fullmatch(f"<{tag}>([^<]*)</{tag}>\n", out)  # no tag inside: no emphasis, code, link
            assert shown and html.unescape(shown[1]) == text, out
    # kramdown (Jekyll, GitHub Pages) reads "{::" and "$$" as markup too, which CommonMark shows as written.
    assert markdown_text("{::comment} $$x$$") == r"\{::comment\} \$\$x\$\$"
    assert markdown_text("1.5") == "1.5" and markdown_text("-") == "-"  # inside a line (the report's numbers) as is


def test_a_poem_in_markdown_keeps_its_lines_and_stanzas_and_shows_them_as_written():
    from neuralda.report import markdown_poem

    poem = "\n".join(HOSTILE[:7]) + "\n\n" + "\n".join(HOSTILE[7:])
    out = rendered(markdown_poem("<b>love</b> # (seed 1)", poem))
    heading, body = out.split("\n", 1)
    assert heading == "<h3>&lt;b&gt;love&lt;/b&gt; # (seed 1)</h3>"
    stanzas = re.fullmatch(r"<p>(.*)</p>\n", body, re.DOTALL)[1].split("</p>\n<p>")
    assert "<" not in "".join(stanzas).replace("<br />\n", "")  # no tag but the line breaks
    assert "\n\n".join(html.unescape(s.replace("<br />\n", "\n")) for s in stanzas) == poem


def test_the_report_says_its_start_on_one_line_in_utf_8(tiny_run, tmp_path):
    """A start with a line break opened a heading in the sentence about it; one with a byte that is not UTF-8
    (a surrogate, as Python reads it from the command line) was a traceback after the plot was written."""
    from neuralda.report import _beginning
    from neuralda.run import Run

    run = Run.open(tiny_run)
    assert _beginning([run], "love\n# the sea") == 'Poems begin with "love # the sea".'
    assert _beginning([run], "love \udcff") == 'Poems begin with "love \ufffd".'


def test_the_report_leaves_the_caller_s_plotting_backend_and_figures_be(tiny_run, tmp_path):
    """matplotlib.use("Agg") switched a notebook's backend for the whole process: its plots stopped showing."""
    import matplotlib.pyplot as plt

    plt.switch_backend("svg")
    try:
        figure = plt.figure()
        write_report([str(tiny_run)], tmp_path / "post.md", samples=1, words=8)
        assert plt.get_backend() == "svg" and plt.get_fignums() == [figure.number]
    finally:
        plt.close("all")
        plt.switch_backend("agg")


def test_a_report_with_no_run_or_a_title_that_is_not_text_is_one_line(tiny_run, tmp_path):
    """A bare StopIteration, and an AttributeError once every poem had been written."""
    with pytest.raises(NeuraldaError, match="^give at least one run directory$"):
        write_report([], tmp_path / "post.md")
    with pytest.raises(NeuraldaError, match="^the title must be text, got None$"):
        write_report([str(tiny_run)], tmp_path / "post.md", title=None)
