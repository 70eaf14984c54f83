import html
import json
import re
import subprocess
import sys

from neuralda.evaluate import evaluate_run
from neuralda.report import write_report


def test_report_structure_plot_and_numbers(tiny_run, tmp_path):
    out = tmp_path / "post" / "report.md"
    out.parent.mkdir()
    entries = write_report([str(tiny_run)], out, tmp_path / "report.html", samples=4, seed=2)
    text = out.read_text()
    # One details block per saved epoch (the seed compares 200 and 400; this run saved 2 and 4), and the summary.
    assert re.findall(r"<summary>(.*?)</summary>", text) == [
        "Model summary", "After 2 training epochs", "After 4 training epochs"
    ]
    assert "Total params:" in text
    # Poems keep their lines: every line break is a <br> inside a <p> per stanza.
    for entry in entries:
        assert "<br>\n".join(html.escape(ln, quote=False) for ln in entry.poem.split("\n\n")[0].split("\n")) in text
    plot = out.parent / "report-perplexity.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Training and held-out perplexity per epoch](report-perplexity.png)" in text
    # The table's numbers are evaluate's.
    row = evaluate_run(tiny_run, "epoch-4", samples=4, seed=2)
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines() if ln.startswith("| ")]
    cells = next(r for r in rows if r[1] == "epoch-4")
    assert cells[3] == f"{row['perplexity']:.1f}"
    assert cells[7] == f"{row['copied_6gram_share']:.1%}"
    page = (tmp_path / "report.html").read_text()
    assert page.count("<details>") == 3 and "data:image/png;base64," in page


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


def test_report_of_a_missing_run_is_one_line(tmp_path):
    out = cli("report", tmp_path / "nope", "-o", tmp_path / "r.md")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
