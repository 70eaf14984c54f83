"""The blog-ready report: poems after each saved epoch side by side, the model summary, the measures, and a
perplexity plot.

The Markdown pastes into a Jekyll or GitHub Pages post: the poems sit in HTML tables and the summaries in
``<details>`` blocks (Markdown has no table cell of several lines, and Markdown inside HTML blocks is not rendered
everywhere), so their line breaks survive. ``--html`` writes the same content as one self-contained page with the
plot embedded.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import NeuraldaError, listed
from .evaluate import comparability_notes, format_ppl, measure_checkpoints
from .files import check_file_name, remove_partial_writes_of, write_together
from .generate import SamplingConfig, default_start, write_poems
from .run import Run, printable

PLOT_SUFFIX = "-perplexity.png"


@dataclass
class Entry:
    """One checkpoint in the report: what it is, the poem it wrote, and its measures."""

    run: Run
    checkpoint: str
    epoch: int | None
    label: str
    poem: str
    measures: dict


def report_checkpoints(run: Run) -> list[str]:
    """The saved epochs (the seed's 200 and 400) and the best checkpoint when it is another epoch, in epoch order;
    without saved epochs, the best and the last checkpoint."""
    names = run.checkpoints()
    saved = {int(c[6:]): c for c in names if c.startswith("epoch-")}
    if not saved:
        shown = [c for c in ("best", "last") if c in names]
        if len(shown) == 2 and run.checkpoint_meta("best").get("epoch") == run.checkpoint_meta("last").get("epoch"):
            shown = ["best"]  # the last epoch was the best: the same weights would write the same poem twice
        return shown
    best_epoch = run.checkpoint_meta("best").get("epoch") if "best" in names else None
    if isinstance(best_epoch, int) and best_epoch not in saved:  # a run's best model belongs in its report
        saved[best_epoch] = "best"
    return [saved[epoch] for epoch in sorted(saved)]


def _label(checkpoint: str, epoch: int | None) -> str:
    epochs = "epoch" if epoch == 1 else "epochs"
    if checkpoint.startswith("epoch-"):
        return f"After {epoch} training {epochs}"
    return f"{'Best' if checkpoint == 'best' else 'Last'} checkpoint (after {epoch} {epochs})"


def collect(
    run_dirs: list[str], start: str, seed: int, samples: int, words: int, corpus: str | Path | None = None
) -> tuple[list[Run], list[Entry]]:
    """The runs, and a poem and the measures of each reported checkpoint of each (perplexity on ``corpus`` when
    given, else on each run's held-out poems)."""
    runs = [Run.open(d) for d in listed(run_dirs, "run_dirs")]
    if not runs:
        raise NeuraldaError("give at least one run directory")
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # headings, table rows and the plot's legend name runs by their folder
        raise NeuraldaError("two runs have the same folder name; report runs whose folders have different names")
    entries = []
    for run_dir, run in zip(run_dirs, runs):
        checkpoints = report_checkpoints(run)
        if not checkpoints:  # killed before its first checkpoint
            raise NeuraldaError(f"{run.path}: no checkpoint yet; train it (or --resume it) first")
        measured = measure_checkpoints(run_dir, checkpoints, corpus, samples, start, words, seed)
        for checkpoint, (measures, model, meta) in zip(checkpoints, measured):
            poem, _ = write_poems(model, run.vocab, start, words, 1, SamplingConfig(), seed)[0]
            epoch = meta.get("epoch")
            entries.append(Entry(run, checkpoint, epoch, _label(checkpoint, epoch), poem, measures))
    return runs, entries


def _plain_log(**options):
    """A log axis's labels as plain numbers ("1,000"), where matplotlib's LogFormatter chooses to label."""
    import matplotlib.ticker

    class PlainLog(matplotlib.ticker.LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return (f"{x:,.0f}" if x >= 1 else f"{x:g}") if super().__call__(x, pos) else ""

    return PlainLog(**options)


def plot_perplexity(runs: list[Run]) -> bytes | None:
    """Training and validation perplexity per epoch for every run on one log-scale chart, as PNG bytes (None when
    no run has recorded an epoch: its metrics.jsonl is missing or empty)."""
    # An epoch too big for a float (a hand-edited file) cannot be placed on the axis.
    rows_of = [[r for r in run.metrics() if math.isfinite(_number(r["epoch"]))] for run in runs]
    if not any(rows_of):
        return None
    import matplotlib.ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A figure of its own, not pyplot's: the caller's backend (a notebook's) and open figures stay as they were.
    fig = Figure(figsize=(8, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # A name is shown as written: "$" is not math, and a label matplotlib would hide ("_draft") gets a zero-width space.
    names = ["\u200b" * n.startswith("_") + n.replace("$", r"\$") for n in (run.name for run in runs)]
    plotted = False  # any perplexity drawn: a log scale of none raises (axvline's 0..1 are axes fractions, not data)
    for i, (run, name, rows) in enumerate(zip(runs, names, rows_of)):
        if not rows:
            continue
        color = f"C{i}"
        epochs = [r["epoch"] for r in rows]
        train = [plottable(r.get("train_ppl")) for r in rows]
        # Small markers: an epoch between gaps, or a run of one epoch, still shows; over the seed's 400 epochs they
        # would touch and draw the dashed training line solid, as the held-out one.
        marker = "." if len(rows) <= 60 else None
        ax.plot(epochs, train, color=color, linestyle="--", linewidth=1.2, marker=marker, markersize=4,
                label=f"{name}: training (dropout on)")
        val_rows = [r for r in rows if not math.isnan(plottable(r.get("val_ppl")))]
        val = [(r["epoch"], plottable(r["val_ppl"])) for r in val_rows]
        plotted = plotted or bool(val) or any(not math.isnan(t) for t in train)
        if val:
            ax.plot(*zip(*val), color=color, linewidth=2, marker=marker, markersize=5, label=f"{name}: held out")
            # The trainer's own best (the last epoch it marked), which a tie in rounded perplexities could hide.
            marked = [v for v, r in zip(val, val_rows) if r.get("best") is True]
            best = marked[-1] if marked else min(val, key=lambda v: v[1])
            ax.scatter([best[0]], [best[1]], color=color, marker="*", s=160, zorder=3, edgecolor="black",
                       label=f"{name}: best, epoch {best[0]} ({best[1]:.0f})")
        for checkpoint in run.checkpoints():
            if checkpoint.startswith("epoch-"):
                ax.axvline(int(checkpoint[6:]), color=color, linestyle=":", linewidth=1)
    if plotted:
        ax.set_yscale("log")
        # 1,000 rather than 10^3; the 2..9 between powers of ten are labelled only where the axis spans few
        # decades (matplotlib's thresholds): over four, as the seed's memorising reaches, they piled on each other.
        ax.yaxis.set_major_formatter(_plain_log(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(_plain_log(labelOnlyBase=False, minor_thresholds=(1.5, 0.75)))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("Perplexity per epoch: falling on training words, rising on held-out poems means memorising")
    ax.title.set_fontsize(10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _number(value: object) -> float:
    """A JSON number as a float; NaN for anything else (a string, a bool, an int too big for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


# Perplexities a log axis takes beside usual ones (10-10,000): past 1e70 matplotlib's layout warned on the terminal,
# past 1e265 its ticks overflowed (a traceback), at 1e308 its margins did. A model that far off has no curve to show.
PLOT_RANGE = (1e-50, 1e50)


def perplexity_value(value: object) -> float:
    """A perplexity from JSON: NaN for a missing, non-numeric, non-positive or infinite one."""
    number = _number(value)
    return number if 0 < number < math.inf else math.nan


def plottable(value: object) -> float:
    """A perplexity to plot on a log scale (``perplexity_value``): NaN, a gap, out of ``PLOT_RANGE`` too."""
    number = perplexity_value(value)
    return number if PLOT_RANGE[0] <= number <= PLOT_RANGE[1] else math.nan


def _poem_html(poem: str, lang: str | None) -> str:
    """A poem as HTML: a paragraph per stanza, ``<br>`` between lines, in its language where the run knows it (the
    report speaks English: screen readers pronounce the poem, and browsers choose the forms of its characters, by
    it), its direction the text's own (an Arabic poem's lines run right to left, its marks at their ends)."""
    stanzas = [s.split("\n") for s in poem.split("\n\n")]
    p = f'<p lang="{lang}" dir="auto">' if lang else '<p dir="auto">'
    return "\n".join(p + "<br>\n".join(html.escape(line, quote=False) for line in lines) + "</p>" for lines in stanzas)


def _details(summary: str, body: str) -> str:
    return f"<details>\n<summary>{html.escape(summary)}</summary>\n\n{body}\n\n</details>"


SIDE_BY_SIDE = 3  # poems in a row: the seed's after 200 and 400 epochs beside our best, and still a readable width


def _poem_tables(entries: list[Entry]) -> list[str]:
    """The poems side by side, at most ``SIDE_BY_SIDE`` to a table and as many in each as can be (four poems: two
    and two), each cell headed by its run and checkpoint (a narrow page stacks the cells, each with its heading). A
    table holds no blank line: Markdown keeps it one HTML block."""
    n, tables = len(entries), []
    count = -(-n // SIDE_BY_SIDE)
    for i in range(count):
        row = entries[n * i // count : n * (i + 1) // count]
        cells = "".join(
            f'<td class="poem"><div class="who">{html.escape(e.run.name)}<br>{html.escape(e.label)}</div>\n'
            f"{_poem_html(e.poem, e.run.lang)}\n</td>"
            for e in row
        )
        tables.append(f'<table class="poems"><tbody><tr>{cells}</tr></tbody></table>')
    return tables


_TABLE = (  # header, key, how the value is written
    ("epoch", "epoch", "{}".format),
    ("held-out ppl", "perplexity", format_ppl),
    ("ppl per word", "perplexity_per_word", format_ppl),
    ("bits/char", "bits_per_char", "{:.2f}".format),
    ("OOV", "oov_rate", "{:.1%}".format),
    ("4-word copies", "copied_4gram_share", "{:.1%}".format),
    ("6-word copies", "copied_6gram_share", "{:.1%}".format),
    ("8-word copies", "copied_8gram_share", "{:.1%}".format),
    ("longest copy", "longest_copy", "{}".format),
    ("distinct-2", "distinct_2", "{:.3f}".format),
)


def _table_rows(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "checkpoint"] + [h for h, _, _ in _TABLE]
    rows = [
        [e.run.name, e.checkpoint] + ["-" if e.measures.get(k) is None else write(e.measures[k]) for _, k, write in _TABLE]
        for e in entries
    ]
    return header, rows


NBH = "\u2011"  # a non-breaking hyphen
# The marks that make Markdown of text: emphasis, code, links, table cells, a heading's closing "#", GFM's ~~strike~~,
# kramdown's (Jekyll's) {::comment} and $$math$$.
_MARKDOWN_MARKS = re.compile(r"([\\`*_\[\]|#~${}])")
# What opens a block at a line's start: a list item ("- ", "1. ", "2) ") or a heading's underline ("===").
_BLOCK_START = re.compile(r"^(\d*)([-+=.)])")


def markdown_text(text: str) -> str:
    """``text`` shown as written inside a line of Markdown (CommonMark, GFM, kramdown): its HTML and every mark that
    would make emphasis, code, links or table cells of it ("poet|a*b*" would split a row and italicise) escaped."""
    return _MARKDOWN_MARKS.sub(r"\\\1", html.escape(text, quote=False))


def markdown_poem(heading: str, poem: str) -> str:
    """``poem`` under a level-3 ``heading`` in Markdown, shown as written: two trailing spaces keep each line break,
    a blank line each stanza, and no line opens a list or underlines a heading."""
    lines = (_BLOCK_START.sub(r"\1\\\2", markdown_text(line)) + "  " if line else "" for line in poem.split("\n"))
    return f"### {markdown_text(' '.join(heading.split()))}\n\n" + "\n".join(lines) + "\n"


def markdown(runs: list[Run], entries: list[Entry], title: str, plot_name: str | None, beginning: str) -> str:
    header, rows = _table_rows(entries)
    out = [f"# {markdown_text(title)}", ""]
    if plot_name:
        # Percent-encoded: a space ends a bare link; a byte that is not UTF-8 is kept as that byte (%FF).
        link = quote(plot_name, errors="surrogateescape")
        out += [f"![Training and held-out perplexity per epoch]({link})", ""]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(markdown_text, r)) + " |" for r in rows]
    out += ["", markdown_text(table_note(entries, beginning)), ""]
    out += ["## Poems", ""]
    for table in _poem_tables(entries):
        out += [table, ""]
    for run in runs:
        out += [f"## {markdown_text(run.name)}", ""]
        out += [_details("Model summary", "<pre>\n" + html.escape(run.summary(), quote=False) + "\n</pre>"), ""]
    return "\n".join(out)


def html_page(runs: list[Run], entries: list[Entry], title: str, plot_png: bytes | None, beginning: str) -> str:
    """The report as one self-contained page (the plot inline as a data URL)."""
    header, rows = _table_rows(entries)
    # Non-breaking hyphens: a header wraps at its spaces ("held-out / ppl"), never into "held- / out".
    table = "<table><thead><tr>" + "".join(f"<th>{html.escape(h.replace('-', NBH))}</th>" for h in header)
    table += "</tr></thead><tbody>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    table += "</tbody></table>"
    image = (
        f'<img src="data:image/png;base64,{base64.b64encode(plot_png).decode("ascii")}" '
        'alt="Training and held-out perplexity per epoch">'
        if plot_png
        else ""
    )
    sections = ["<h2>Poems</h2>", *_poem_tables(entries)]
    for run in runs:
        summary = _details("Model summary", f"<pre>{html.escape(run.summary())}</pre>")
        sections += [f"<h2>{html.escape(run.name)}</h2>", summary]
    body = "\n".join(sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ max-width: 46rem; margin: 2rem auto; padding: 0 1rem; font: 17px/1.6 Georgia, "Iowan Old Style", serif;
       color: #2b2118; background: #fbf7f0; }}
h1, h2 {{ font-weight: normal; letter-spacing: .01em; overflow-wrap: anywhere; }}
img {{ max-width: 100%; height: auto; border: 1px solid #e4d9c6; background: white; }}
table {{ border-collapse: collapse; font: 12.5px/1.4 system-ui, sans-serif; width: 100%; overflow-x: auto;
        display: block; }}
th, td {{ padding: .25rem .2rem; border-bottom: 1px solid #e4d9c6; text-align: right; white-space: nowrap; }}
/* Headers wrap at their spaces and a long run name anywhere: every column fits the page's measure. */
th {{ white-space: normal; vertical-align: bottom; }}
td:first-child {{ white-space: normal; overflow-wrap: anywhere; min-width: 4rem; }}
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) {{ text-align: left; }}
details {{ margin: .8rem 0; padding: .4rem .8rem; border-left: 3px solid #b5651d; background: white; }}
summary {{ cursor: pointer; font-style: italic; }}
pre {{ font-size: 12px; overflow-x: auto; }}
.poem p {{ margin: .9rem 0; overflow-wrap: anywhere; }}
table.poems {{ display: table; table-layout: fixed; font: inherit; margin: 1rem 0; }}
table.poems td {{ white-space: normal; text-align: start; vertical-align: top; padding: 0 .6rem; }}
.who {{ font: italic 14px/1.4 Georgia, serif; overflow-wrap: anywhere; border-bottom: 1px solid #e4d9c6; }}
/* A narrow page stacks the poems: in three columns of a phone's width every line of theirs broke. */
@media (max-width: 40rem) {{ table.poems, table.poems tbody, table.poems tr, table.poems td {{ display: block; }} }}
.note {{ font-size: 14px; color: #6b5a48; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{image}
{table}
<p class="note">{html.escape(table_note(entries, beginning))}</p>
{body}
</body></html>
"""


def table_note(entries: list[Entry], beginning: str) -> str:
    """What the measures table says, how the poems begin, and why its perplexities are not comparable if they are
    not (``comparability_notes``)."""
    notes = comparability_notes([e.measures for e in entries])
    said = "".join(f" Note: {note[0].upper()}{note[1:]}." for note in notes)
    return (
        "Held-out perplexity on poems the model never saw (lower is better; OOV: the share of their tokens the "
        "vocabulary reads as <unk>); copies: the share of the written poems' word runs, past the words they were "
        f"given, found verbatim in the training poems. {beginning}{said}"
    )


def _beginning(runs: list[Run], start: str | None) -> str:
    """How the report's poems begin, as a sentence (``start`` none: "love", or anywhere for a model without it)."""
    given = None if start is None else " ".join(printable(start).split())  # one line, UTF-8 ("  ": none)
    starts = {default_start(run.vocab) if given is None else given for run in runs}
    if starts == {""}:
        return "Poems begin where the model likes."
    word = next(s for s in starts if s)
    unknown = ", or where the model likes in a run whose model does not know the word" if "" in starts else ""
    return f'Poems begin with "{word}"{unknown}.'


def report_paths(output: str | Path, html_path: str | Path | None, force: bool) -> tuple[Path, Path, Path | None]:
    """The Markdown file, the plot beside it and the HTML page; a bad path, or an existing file without ``force``,
    is a one-line error."""
    check_file_name(output, "post.md")
    if html_path is not None:  # --html '' is no file name, not "no page"
        check_file_name(html_path, "post.html")
    output = Path(output)
    real = Path(os.path.realpath(output))  # where a link as -o has the Markdown written: its plot goes beside it
    plot = real.with_name(real.stem + PLOT_SUFFIX)
    page = None if html_path is None else Path(html_path)
    paths = [p for p in (output, plot, page) if p]
    if len({os.path.realpath(p) for p in paths}) < len(paths):  # Path.resolve: RuntimeError on a symlink loop
        raise NeuraldaError(f"-o {output} and --html {page} would write the same file (the plot is {plot})")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        one = len(existing) == 1
        raise NeuraldaError(
            f"{', '.join(existing)} already exist{'s' if one else ''}; choose another -o or --html, "
            f"or add --force to replace {'it' if one else 'them'}"
        )
    return output, plot, page


def write_report(
    run_dirs: list[str],
    output: str | Path,
    html_path: str | Path | None = None,
    start: str | None = None,
    seed: int = 0,
    title: str = "Teaching a computer to write poems",
    samples: int = 20,
    words: int = 120,
    force: bool = False,
    corpus: str | Path | None = None,
) -> list[Entry]:
    """Write the Markdown report (and the plot beside it, and the HTML page when asked); returns its entries.

    The outputs are checked before any poem is written: an existing one is replaced only with ``force``.
    """
    if not isinstance(title, str):
        raise NeuraldaError(f"the title must be text, got {title!r}")
    output, plot, html_path = report_paths(output, html_path, force)
    runs, entries = collect(run_dirs, start, seed, samples, words, corpus)
    title = " ".join(printable(title).split())  # one line: a Markdown heading ends at a line break
    plot_png = plot_perplexity(runs)
    # Everything is made before anything is written: a failure leaves no plot without its report.
    beginning = _beginning(runs, start)
    text = markdown(runs, entries, title, plot.name if plot_png else None, beginning) + "\n"
    page = html_page(runs, entries, title, plot_png, beginning) if html_path else None
    remove_partial_writes_of(plot, output, *([html_path] if page is not None else []))  # what a killed report left
    # All or none: a page that cannot be written (a read-only folder) leaves the report it would have replaced.
    files = {plot: plot_png, output: text, html_path: page}
    write_together({path: data for path, data in files.items() if data})
    return entries
