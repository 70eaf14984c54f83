"""The one entry point: ``neuralda COMMAND ...``. Heavy modules (torch) are imported by the command that needs them."""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import NeuraldaError, NeuraldaWarning, OptionError, Terminated, shown
from .models import ARCHS, RECIPES

DEMO_RUN = Path("runs/demo")


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least ``minimum`` (and at most sys.maxsize: a count of poems or
    words beyond it overflows a C integer, a traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if value > sys.maxsize:
            raise argparse.ArgumentTypeError(f"must be at most {sys.maxsize}, got {value}")
        return value

    return parse


_positive_int = _whole_number(1)


def _name(text: str) -> str:
    """An argparse type for a file or folder name: never empty (an empty name reads as the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty name; give a file or folder")
    return text


def _epochs_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 200,400, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("epochs must be at least 1")
    return values


def _duration(text: str, zero: bool = False) -> float:
    from .train import parse_duration

    try:
        return parse_duration(text, zero)
    except NeuraldaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _interval(text: str) -> float:
    """A duration, or 0 (no limit, or every time)."""
    return _duration(text, zero=True)


def _per_arch(name: str) -> str:
    """Help text for a train option whose default is the recipe's field ``name``, e.g. "lstm 100, gpt 100"."""

    def written(value) -> str:
        return (",".join(map(str, value)) or "none") if isinstance(value, tuple) else f"{value:g}"

    return "default per --arch: " + ", ".join(f"{arch} {written(getattr(r, name))}" for arch, r in RECIPES.items())


def _command() -> str:
    """How this user runs neuralda again, for hints: ``make demo`` runs .venv/bin/neuralda without activating the
    venv, so a bare ``neuralda`` is not always on PATH."""
    script = Path(sys.argv[0])
    if script.stem != "neuralda" or not script.is_file():  # python -m neuralda
        return f"{shlex.quote(sys.executable)} -m neuralda"
    found = shutil.which("neuralda")
    if found and Path(found).resolve() == script.resolve():
        return "neuralda"
    rel = os.path.relpath(script)
    return shlex.quote(rel if os.sep in rel else os.path.join(os.curdir, rel))  # "neuralda" alone would search PATH


def _config(cls, args: argparse.Namespace, **given):
    """A config dataclass from the flags of the same names (``--quiet`` turns ``progress`` off)."""
    from dataclasses import fields

    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, "progress": not args.quiet, **given})


# --- corpus -------------------------------------------------------------------------------------------------------


def cmd_corpus_import(args: argparse.Namespace) -> None:
    from .corpus import import_files, write_corpus
    from .files import check_file_name, remove_partial_writes_of

    check_file_name(args.output, "corpus.jsonl")  # "-o poems/" wrote a file named poems
    if Path(args.output).exists() and not args.force:
        raise NeuraldaError(f"{args.output} already exists; choose another -o, or add --force to replace it")
    poems = import_files(args.files, args.format, args.author, args.title, args.body, args.lang)
    remove_partial_writes_of(args.output)  # what a killed import left
    write_corpus(args.output, poems)
    print(f"wrote {len(poems)} poem{'' if len(poems) == 1 else 's'} to {args.output}", file=sys.stderr)


def cmd_corpus_stats(args: argparse.Namespace) -> None:
    from .corpus import corpus_stats, read_corpus

    stats = corpus_stats(read_corpus(args.corpus), keep_case=args.keep_case)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return
    for key in ("poems", "lines", "words", "tokens", "vocabulary", "distinct_words", "words_once"):
        print(f"{key.replace('_', ' '):<16}{stats[key]:>10,}")
    print("most common     " + ", ".join(f"{w} ({c})" for w, c in stats["most_common"]))


# --- train and write ----------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    if not args.resume and not args.corpus:
        raise NeuraldaError("train needs a corpus file (or --resume to continue the run in -o)")
    cfg = _config(TrainConfig, args, corpus=args.corpus or "")
    train(cfg, resume=args.resume)


def _print_poems(poems: list[tuple[str, bool]], fmt: str, start: str, seed: int) -> None:
    if fmt == "json":
        rows = [{"poem": p, "ended": e, "start": start, "seed": seed + i} for i, (p, e) in enumerate(poems)]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif fmt == "markdown":
        from .report import markdown_poem

        for i, (poem, _) in enumerate(poems):
            print(markdown_poem(f"{start.strip() or 'Poem'} (seed {seed + i})", poem))
    else:
        print("\n\n* * *\n\n".join(p for p, _ in poems))


def cmd_generate(args: argparse.Namespace) -> None:
    from .generate import Poet, SamplingConfig, default_start, write_poems
    from .run import printable

    poet = Poet.load(args.run, args.checkpoint, device=args.device, precision=args.precision)
    seed = int.from_bytes(os.urandom(4), "little") if args.seed is None else args.seed
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    start = default_start(poet.vocab) if args.start is None else printable(args.start)  # JSON and Markdown are UTF-8
    poems = write_poems(
        poet.model, poet.vocab, start, args.words, args.n, sampling, seed, args.lines, args.form,
        poet.guards.get(args.max_copy), poet.precision,
    )
    _print_poems(poems, args.format, start, seed)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import comparability_notes, evaluate_run

    row = evaluate_run(
        args.run, args.checkpoint, corpus=args.corpus, samples=args.samples, start=args.start, words=args.words,
        seed=args.seed,
    )
    if args.json:
        print(_json(row))
        return
    for key, value in row.items():
        # None: nothing to measure (--samples 0, poems too short), shown as in compare's and the report's tables.
        shown = "-" if value is None else f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key.replace('_', ' '):<22}{shown}")
    for note in comparability_notes([row]):
        print(f"note: {note}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .evaluate import compare_rows, format_compare

    rows = compare_rows(
        args.specs, corpus=args.corpus, samples=args.samples, start=args.start, words=args.words, seed=args.seed
    )
    print(_json(rows) if args.json else format_compare(rows))


def _json(value) -> str:
    """``value`` as JSON for other programs: JSON has no infinity or NaN (an overflowing perplexity), so null."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return [finite(x) for x in v] if isinstance(v, list) else v

    return json.dumps(finite(value), ensure_ascii=False)


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    write_report(
        args.runs, args.output, args.html, args.start, args.seed, args.title, args.samples, args.words, args.force,
        args.corpus,
    )
    print(f"wrote {args.output}" + (f" and {args.html}" if args.html else ""), file=sys.stderr)


def cmd_summary(args: argparse.Namespace) -> None:
    import torch

    from .models import build_model, default_size, summary_table
    from .run import Run

    sizes = (args.arch, args.vocab, args.hidden, args.layers)
    if args.run and any(sizes):
        raise NeuraldaError("summary takes a run directory or --arch and --vocab, not both")
    if not args.run and not (args.arch and args.vocab):
        raise NeuraldaError("summary needs a run directory, or --arch and --vocab")
    if args.run:
        run = Run.open(args.run)
        print(run.summary(f"{run.name} ({run.config['arch']})"))
        return
    hidden, layers = default_size(args.arch, 100_000)
    with torch.device("meta"):  # shapes without memory: a model of any size is counted, never allocated
        try:
            model = build_model(args.arch, args.vocab, args.hidden or hidden, args.layers or layers, 0.0)
        except RuntimeError as e:  # on the meta device only a size fails: a matrix past 2^63 numbers
            raise NeuraldaError(f"--vocab {args.vocab} and --hidden {args.hidden or hidden}: {e}") from None
    print(summary_table(model, args.arch))


def cmd_scrape(args: argparse.Namespace) -> None:
    from .scrape import ScrapeConfig, list_presets, scrape

    if args.list_presets:
        for name, description, checked in list_presets():
            print(f"{name:<18}{description}\n{'':<18}checked: {checked}")
        return
    if not args.start_urls or not args.output:
        raise NeuraldaError("scrape needs START_URL... and -o CORPUS.jsonl (or --list-presets)")
    config = _config(ScrapeConfig, args)
    try:
        summary = scrape(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the poems written so far are kept in {config.output}; "
              "the same command goes on from there", file=sys.stderr)
        raise
    print(summary.text(), file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import serve

    serve(args.runs, host=args.host, port=args.port)


def _scraped_from_this_machine(path: Path) -> bool:
    """Whether every poem in ``path`` came from a site on 127.0.0.1, as the demo's do (a last line a killed scrape
    tore is skipped): a corpus of the user's with the demo's file name is never replaced."""
    from urllib.parse import urlsplit

    from .files import parse_json

    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError:
            if number == len(lines) and line.startswith(b"{"):  # a torn record, as scrape reads one
                continue
            return False
        try:
            if not isinstance(record, dict) or urlsplit(str(record.get("url"))).hostname != "127.0.0.1":
                return False
        except ValueError:  # "http://[::1": not a URL
            return False
    return True


def cmd_demo(args: argparse.Namespace) -> None:
    """Serve the bundled corpus as a website on 127.0.0.1, scrape it, train on it, and write a poem."""
    import importlib.resources
    import tempfile

    from .corpus import read_corpus
    from .demo.site import serve_poems
    from .files import folder_lock, made_folder, parse_json, write_json
    from .generate import write_poems
    from .run import Run, printable
    from .scrape import scrape
    from .train import TrainConfig, _foreign_files, holds_files, train

    if not 0 < args.minutes < math.inf:  # 0 would be no limit at all to training; NaN compares False
        raise NeuraldaError(f"--minutes must be a number above 0, got {args.minutes:g}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():  # found only after the scrape, by train, which said it held "no run yet"
        raise NeuraldaError(f"{out} is a file, not a folder; choose another -o")
    folder = out.resolve()  # where a symbolic link -o leads: the run is put beside it, and the link stays
    if folder in (Path.cwd(), *Path.cwd().parents):  # the run replaces the folder: never this one or above
        raise NeuraldaError(f"-o {out} is the current folder or one above it; name a folder for the demo's run")
    # The folder is replaced whole: anything in it that is not a run's file (a user's notes, a report) is refused.
    foreign = _foreign_files(out)
    if foreign:
        raise NeuraldaError(f"{out} holds files that are not a run's ({', '.join(foreign[:3])}); choose another -o")
    corpus_out = out.parent / f"{out.name}-corpus.jsonl"
    if (out / "config.json").exists():
        try:
            previous = parse_json((out / "config.json").read_text(encoding="utf-8"))
        except ValueError:  # not JSON, or not UTF-8: a file of the user's, never the demo's
            previous = None
        corpus = previous.get("corpus") if isinstance(previous, dict) else None
        if corpus is None or Path(str(corpus)).resolve() != corpus_out.resolve():
            raise NeuraldaError(f"{out} holds a run that is not the demo's; choose another -o")
    elif holds_files(out):
        # What a demo of an earlier version, killed before its config.json, left there: only the demo's own split
        # (poems scraped from 127.0.0.1) may be replaced; a vocab.json or data/*.jsonl of the user's never is.
        split = [p for p in (out / "data" / "train.jsonl", out / "data" / "val.jsonl") if p.exists()]
        orphan_vocab = (out / "vocab.json").exists() and not split  # _prepare writes the split before it
        if orphan_vocab or not all(map(_scraped_from_this_machine, split)):
            raise NeuraldaError(f"{out} holds files that are not the demo's run; choose another -o")
    if corpus_out.exists() and not _scraped_from_this_machine(corpus_out):
        raise NeuraldaError(f"{corpus_out} holds poems the demo did not scrape; choose another -o")
    # The new run is trained beside the last one and takes its place only when whole: a demo killed on its way
    # leaves the last one as it was (one killed between the two renames below finds it aside, and puts it back).
    # (Beside the link, the link itself was renamed aside and a folder took its place.)
    new, old = folder.parent / f".{folder.name}.new", folder.parent / f".{folder.name}.old"
    if old.is_dir() and not folder.exists():
        old.rename(folder)
    # Locked as `train` locks a run, until the new run is in its place: a `train` of the last one running meanwhile
    # wrote its epochs into the new one, and a second demo into the same folder trained into the same .new.
    with made_folder(folder), folder_lock(folder):
        for leftover in (new, old):
            shutil.rmtree(leftover, ignore_errors=True)
        poems = read_corpus(importlib.resources.files("neuralda") / "demo" / "poems.jsonl")
        with tempfile.TemporaryDirectory() as cache, serve_poems(poems) as site:
            print(f"neuralda demo: serving {len(poems)} poems at {site.url} and scraping them", file=sys.stderr)
            # Into the last demo's corpus, if any: a scrape adds only the poems missing there.
            print(scrape(site.config(str(corpus_out), cache, progress=not args.quiet)).text(), file=sys.stderr)
        last = (folder / "config.json").exists()
        replacing = f"; it replaces the last demo run in {printable(str(out))}" if last else ""
        print(f"neuralda demo: training the default model for up to {args.minutes:g} min{replacing}", file=sys.stderr)
        train(TrainConfig(corpus=str(corpus_out), output=str(new), max_time=args.minutes * 60, progress=not args.quiet))
        config = json.loads((new / "config.json").read_text(encoding="utf-8"))
        write_json(new / "config.json", {**config, "output": str(out)})  # where the run is from now on
        folder.rename(old)
        new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    run = Run.open(out)
    model, _ = run.load_model("best")
    poem, _ = write_poems(model, run.vocab, words=80, seed=args.seed)[0]
    print(f"\nA poem from \"love\" ({printable(str(out))}, best checkpoint):\n\n{poem}\n")  # stdout: strict UTF-8
    print(f"Write more: {_command()} generate {shlex.quote(str(out))} --start \"the sea\" --n 3", file=sys.stderr)


# --- the parser ---------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error of neuralda (argparse prints its usage block first)."""

    def error(self, message: str):
        self.exit(2, f"neuralda: error: {shown(message)} (see {self.prog} --help)\n")

    def set_defaults(self, **kwargs) -> None:
        super().set_defaults(command_prog=self.prog, **kwargs)  # a command's parser: its --help is the one to see

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, but an unknown option points to its command's --help, not to neuralda's list of commands."""
        first = (sys.argv[1:] if args is None else args)[:1]
        if first and first[0].startswith("-") and first[0] not in ("-h", "--help", "--version", "--"):
            # argparse said "the following arguments are required: COMMAND" of `neuralda --top-p 2 generate`
            self.error(f"{first[0]}: a command comes first, then its options (neuralda COMMAND [OPTIONS])")
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            prog = getattr(parsed, "command_prog", self.prog)
            self.exit(2, f"neuralda: error: unrecognized arguments: {shown(' '.join(unknown))} (see {prog} --help)\n")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="neuralda",
        description="Teach a computer to write poems in a poet's voice: collect, train, write, measure.",
    )
    p.add_argument("--version", action="version", version=f"neuralda {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    corpus = sub.add_parser("corpus", help="import text files into a corpus, or count one")
    csub = corpus.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    imp = csub.add_parser(
        "import", help="JSONL or JSON, plain text, Project Gutenberg or saved web pages -> corpus.jsonl"
    )
    imp.add_argument(
        "files", type=_name, nargs="+", metavar="FILE", help="the files to read, in any of the formats of --format"
    )
    imp.add_argument("-o", "--output", type=_name, required=True, help="the corpus to write (JSONL)")
    imp.add_argument("--author", help="the author of every poem")
    imp.add_argument(
        "--lang",
        help="the language of every poem, e.g. es (default: what a saved page or a record says); a file that is not "
        "UTF-8 is read in that language's legacy encodings",
    )
    imp.add_argument("--format", default="auto", choices=("auto", "jsonl", "text", "gutenberg", "html"),
                     help="auto (default): JSON, HTML (by its name or its first tag), Project Gutenberg, else text")
    imp.add_argument("--title", metavar="CSS", help="HTML: the title (default: the h1, else the page's <title>)")
    imp.add_argument("--body", metavar="CSS", help="HTML: the poem (default: the page's body less navigation)")
    imp.add_argument("--force", action="store_true", help="replace the output if it exists (it is read first)")
    imp.set_defaults(func=cmd_corpus_import)
    stats = csub.add_parser("stats", help="poems, lines, words, tokens, vocabulary")
    stats.add_argument("corpus", type=_name, help="a corpus (JSONL)")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.add_argument("--keep-case", action="store_true", help="count Love and love apart")
    stats.set_defaults(func=cmd_corpus_stats)

    sc = sub.add_parser("scrape", help="collect a poet's poems from a website into a corpus, politely")
    sc.add_argument("start_urls", nargs="*", metavar="START_URL", help="index pages listing the poems")
    sc.add_argument(
        "-o", "--output", type=_name, help="the corpus to append to (JSONL); a rerun adds only missing poems"
    )
    sc.add_argument("--links", metavar="CSS", help="the poem links on an index page")
    sc.add_argument("--next", metavar="CSS", help="the link to the next index page")
    sc.add_argument("--title", metavar="CSS", help="the title on a poem page")
    sc.add_argument("--body", metavar="CSS", help="the poem on a poem page")
    who = sc.add_mutually_exclusive_group()
    who.add_argument("--author", metavar="NAME", help="the author of every poem")
    who.add_argument("--author-css", metavar="CSS", help="the author on a poem page")
    sc.add_argument("--lang", help="the language of every poem, e.g. es (default: what each page says, <html lang>)")
    sc.add_argument("--preset", metavar="NAME", help="selectors for a known site (see --list-presets)")
    sc.add_argument("--list-presets", action="store_true", help="list the known sites and exit")
    sc.add_argument(
        "--max-poems", type=_positive_int,
        help="stop once the output holds this many poems of this crawl, earlier runs' included (default: no limit)",
    )
    sc.add_argument("--max-pages", type=_positive_int, help="index pages to visit at most (default: no limit)")
    sc.add_argument("--delay", type=float, default=1.0, help="seconds between requests to a host (default %(default)g)")
    sc.add_argument(
        "--timeout", type=float, default=30.0, help="seconds for a whole response before it is retried (default %(default)g)"
    )
    sc.add_argument(
        "--retries", type=int, default=3, help="retries on 408, 429, 5xx and timeouts (default %(default)s, at most 10)"
    )
    sc.add_argument(
        "--cache", type=_name, dest="cache_dir", metavar="DIR", help="the HTTP cache (default: the user's cache folder)"
    )
    sc.add_argument("--refresh", action="store_true", help="fetch again what is in the cache")
    sc.add_argument("--user-agent", metavar="TEXT", help=f"default: neuralda/{__version__}")
    sc.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sc.set_defaults(func=cmd_scrape)

    t = sub.add_parser("train", help="train a model on a corpus into a run directory")
    t.add_argument("corpus", type=_name, nargs="?", help="the corpus (JSONL); not needed with --resume")
    t.add_argument("-o", "--output", type=_name, required=True, help="the run directory, e.g. runs/neruda")
    t.add_argument("--arch", choices=ARCHS, help="default: lstm (ours)")
    t.add_argument("--epochs", type=_positive_int, help=f"epochs at most ({_per_arch('epochs')})")
    t.add_argument(
        "--save-at", type=_epochs_list,
        help=f"also keep these epochs' checkpoints, e.g. 200,400 ({_per_arch('save_at')})",
    )
    t.add_argument("--batch-size", type=_positive_int, help=_per_arch("batch_size"))
    t.add_argument("--seq-len", type=_positive_int, help=f"words per training window ({_per_arch('seq_len')})")
    t.add_argument("--lr", type=float, help=f"learning rate ({_per_arch('lr')})")
    t.add_argument("--dropout", type=float, help=_per_arch("dropout"))
    t.add_argument("--weight-decay", type=float, help=_per_arch("weight_decay"))
    t.add_argument("--hidden", type=_positive_int, help="units per layer (default: from --arch and the corpus size)")
    t.add_argument("--layers", type=_positive_int, help="default: from --arch and the corpus size")
    t.add_argument(
        "--unk-rate", type=float,
        help=f"read words seen once as <unk> this often, to learn unknown words ({_per_arch('unk_rate')})",
    )
    t.add_argument(
        "--carry-state", action=argparse.BooleanOptionalAction, default=None,
        help="carry the LSTM state from batch to batch along the streams (thoutt, lstm; default: yes); "
        "--no-carry-state starts each batch from zeros, as got-book-6's code did",
    )
    t.add_argument("--val-fraction", type=float, help="poems held out (default 0.1)")
    t.add_argument(
        "--max-time", type=_interval, metavar="DURATION",
        help="stop cleanly after this long: 90s, 10m, 1h (0: no limit); recorded, so --resume gets the same budget "
        "again, counted from its start, unless given another",
    )
    t.add_argument(
        "--save-every", type=_interval, metavar="DURATION",
        help="write the best and last checkpoints this often (default 30s; 0: after every epoch), and at the end",
    )
    t.add_argument(
        "--patience", type=_whole_number(0),
        help=f"stop after K epochs in a row without a 0.01%% gain in validation loss (0: off; {_per_arch('patience')})",
    )
    t.add_argument("--device", help="auto (default; with --resume: the run's), cpu, cuda or mps")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="default: auto")
    t.add_argument("--seed", type=int, help="default: 0")
    t.add_argument("--min-count", type=_positive_int, help="rarer words become <unk> (default 1)")
    t.add_argument("--keep-case", action="store_true", default=None, help="do not lower-case")
    t.add_argument(
        "--compile", action="store_true",
        help="torch.compile the model in this invocation (a --resume compiles if given it again; GPU; slower on CPU)",
    )
    t.add_argument(
        "--resume", action="store_true",
        help="continue the run in -o from its last checkpoint (given the corpus too: start it if it is not there yet)",
    )
    t.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="write poems with a trained run")
    g.add_argument("run", type=_name, help="a run directory")
    g.add_argument("--start", help='the first word(s) (default: "love" where the model knows it, else anywhere)')
    g.add_argument(
        "--words", type=_positive_int, default=120,
        help="at most this many words, the start's among them (a longer start is kept whole; default 120)",
    )
    g.add_argument("--n", type=_positive_int, default=3, help="how many poems (default 3)")
    # The defaults are SamplingConfig's (a test checks): neuralda.generate imports torch, too slow for --help.
    g.add_argument(
        "--temperature", type=float, default=0.9, help="default %(default)g; 1 with --top-p 1: as the seed sampled"
    )
    g.add_argument("--top-k", type=int, default=0, help="keep the k likeliest words (default %(default)s: off)")
    g.add_argument(
        "--top-p", type=float, default=0.95,
        help="keep the likeliest words that hold this much probability (default %(default)g; 1: all)",
    )
    g.add_argument(
        "--repetition-penalty", type=float, default=1.0,
        help="above 1: fewer repeated words, e.g. 1.2 (default %(default)g: none)",
    )
    g.add_argument(
        "--max-copy", type=int, default=0, metavar="N",
        help="no run of N words copied from the training poems (default 0: no guard; else 2 or more)",
    )
    g.add_argument("--lines", type=int, default=0, help="stop after this many lines (0: no limit)")
    g.add_argument(
        "--form", default="free", choices=("free", "couplet", "tercet", "quatrain"),
        help="lines per stanza: 2, 3 or 4 (default free: as the model likes)",
    )
    g.add_argument("--checkpoint", default="best", help="best (default), last or epoch-N")
    g.add_argument("--seed", type=int, help="the same seed writes the same poems")
    g.add_argument(
        "--format", default="text", choices=("text", "markdown", "json"),
        help="text (default): poems apart by * * *; markdown: a heading each; json: a list of objects",
    )
    g.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    g.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"),
        help="auto: bfloat16 weights on a CPU with bf16 units (twice as fast there), else float32; "
             "bf16: bfloat16 for any model",
    )
    g.set_defaults(func=cmd_generate)

    def measure_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--samples", type=_whole_number(0), default=20,
            help="poems written for the copying measures (default %(default)s; 0: none)",
        )
        parser.add_argument(
            "--start", help='their start word(s) (default: "love" where the model knows it, else anywhere)'
        )
        parser.add_argument("--words", type=_positive_int, default=120, help="words per poem (default 120)")
        parser.add_argument("--seed", type=int, default=0, help="of the poems (default %(default)s)")
        parser.add_argument("--corpus", type=_name, help="held-out poems (default: each run's validation split)")

    ev = sub.add_parser("evaluate", help="held-out perplexity, copying and diversity of a run's checkpoint")
    ev.add_argument("run", type=_name, help="a run directory")
    ev.add_argument("--checkpoint", default="best", help="best (default), last or epoch-N")
    measure_options(ev)
    ev.add_argument("--json", action="store_true", help="one flat JSON object")
    ev.set_defaults(func=cmd_evaluate)

    cmp = sub.add_parser("compare", help="the measures of several runs or checkpoints side by side")
    cmp.add_argument(
        "specs", type=_name, nargs="+", metavar="RUN[:CHECKPOINT]", help="e.g. runs/seed:epoch-200 runs/ours:best"
    )
    measure_options(cmp)
    cmp.add_argument("--json", action="store_true", help="a JSON list of flat objects, one per row")
    cmp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="a Markdown (and HTML) report with poems per saved epoch, measures, a plot")
    rp.add_argument(
        "runs", type=_name, nargs="+", metavar="RUN", help="run directories, with folder names of their own"
    )
    rp.add_argument(
        "-o", "--output", type=_name, required=True, help="the Markdown file; the plot is written beside it"
    )
    rp.add_argument("--html", type=_name, help="also one self-contained HTML page")
    rp.add_argument(
        "--title", default="Teaching a computer to write poems", help="the heading (default: %(default)s)"
    )
    rp.add_argument("--force", action="store_true", help="replace an existing Markdown file, plot or HTML page")
    measure_options(rp)
    rp.set_defaults(func=cmd_report)

    s = sub.add_parser("summary", help="a Keras-style table of a model's layers and parameters")
    s.add_argument("run", type=_name, nargs="?", help="a run directory")
    s.add_argument("--arch", choices=ARCHS, help="a model to count (with --vocab)")
    s.add_argument("--vocab", type=_positive_int, help="vocabulary size (with --arch)")
    s.add_argument(
        "--hidden", type=_positive_int,
        help="units per layer (default: what train picks for --arch on a corpus of 100,000 tokens)",
    )
    s.add_argument(
        "--layers", type=_positive_int, help="default: what train picks for --arch on a corpus of 100,000 tokens"
    )
    s.set_defaults(func=cmd_summary)

    sv = sub.add_parser("serve", help="a web page and JSON API for writing poems with trained runs")
    sv.add_argument("runs", type=_name, nargs="+", metavar="RUN", help="run directories to serve")
    sv.add_argument("--host", default="127.0.0.1", help="default %(default)s (this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="default %(default)s")
    sv.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="scrape the bundled demo site on 127.0.0.1, train on it, write a poem")
    d.add_argument("--minutes", type=float, default=3.0, help="training budget, above 0 (default 3)")
    d.add_argument("-o", "--output", type=_name, default=str(DEMO_RUN), help="the run directory (default runs/demo)")
    d.add_argument("--seed", type=int, help="the seed of the poem printed at the end")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    d.set_defaults(func=cmd_demo)
    return p


def _one_line_warnings(show: Callable) -> Callable:
    """``warnings.showwarning`` that prints neuralda's own warnings as one line, as errors are."""

    def showwarning(message, category, *rest, **kwargs) -> None:
        if issubclass(category, NeuraldaWarning):
            print(f"neuralda: warning: {shown(str(message))}", file=sys.stderr)
        else:
            show(message, category, *rest, **kwargs)

    return showwarning


def _drop_unread_output() -> None:
    """Point stdout or stderr at /dev/null where its reader went away: Python flushes both at exit, and a flush of what
    is left in a buffer into the closed pipe makes the exit status 120 (the signal module's note on SIGPIPE)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):  # not a file (a test's capture): nothing is flushed into a pipe at exit
                pass
            finally:
                os.close(devnull)


OTHER_RANKS_WAIT = 5.0  # seconds a torchrun process other than rank 0 waits before it fails with rank 0's error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # A closed stdout (`>&-`) is None to Python, and print() to it writes nothing: poems would vanish, exit 0.
        printed = args.func in (cmd_corpus_stats, cmd_generate, cmd_evaluate, cmd_compare, cmd_summary, cmd_demo)
        if sys.stdout is None and (printed or args.func is cmd_scrape and args.list_presets):
            raise NeuraldaError("the output (stdout) is closed; send it to a file instead (> out.txt)")
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            args.func(args)
    except NeuraldaError as e:
        return _error(e.flagged() if isinstance(e, OptionError) else str(e))
    except KeyboardInterrupt as e:
        if argv is None:  # the program itself is ending: a second Ctrl-C while Python exits was a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)  # as a shell reports them
    except UnicodeEncodeError as e:  # stdout cannot hold a poem's letters (PYTHONIOENCODING=ascii, a Windows pipe)
        out = codecs.lookup(getattr(sys.stdout, "encoding", None) or "utf-8").name
        if out == "utf-8" or out != codecs.lookup(e.encoding).name:  # not the output's doing: a bug
            raise
        cannot = e.object[e.start : e.end]
        return _error(f"the output's encoding ({out}) cannot write {cannot!r}; set PYTHONIOENCODING=utf-8")
    except BrokenPipeError:  # the reader went away: `generate ... | head` has what it asked for; a job was stopped
        _drop_unread_output()
        return 141 if args.func in (cmd_train, cmd_demo, cmd_scrape) else 0  # 128 + SIGPIPE, as a shell reports it
    except OSError as e:  # the machine's doing (a full disk, no permission), not a bug: one line too
        from .files import why_not_written

        why = str(why_not_written(e.filename, e) if e.filename else e.strerror or e)
        named = not e.filename or why.startswith(f"{e.filename} ")  # "runs/x is a file, not a folder"
        return _error(why if named else f"{e.filename}: {why}")
    except (MemoryError, RuntimeError) as e:  # too large for this machine; torch says so (CPU, CUDA, MPS) in words
        if isinstance(e, RuntimeError) and not any(s in str(e) for s in ("out of memory", "can't allocate memory")):
            raise
        return _error(f"out of memory; {OOM_HINTS.get(args.func, OOM_HINT)}")
    return 0


# What to try when a command runs out of memory, in its own flags (evaluate has no --n; the demo, the corpus commands
# and scrape have none that would help).
OOM_HINT = "close other programs, or run it on a machine with more memory"
OOM_HINTS = {
    cmd_train: "try a smaller model (--hidden, --layers), --batch-size or --seq-len", cmd_serve: "try a smaller model",
    cmd_generate: "try fewer poems at once (--n)",
    **dict.fromkeys((cmd_evaluate, cmd_compare, cmd_report), "try fewer --samples"),
}


def _error(message: str) -> int:
    """Say ``message`` as the one-line error; exit code 2. Under torchrun every process has it (the same checks, or
    rank 0's error passed on by Dist.on_main): rank 0 says it. The others wait a moment first: torchrun stops every
    process once one has failed, and a rank 1 ahead of rank 0 had it stopped before it said anything (2 jobs in 8
    given a bad --device)."""
    if os.environ.get("RANK", "0") == "0" or os.environ.get("WORLD_SIZE", "1") == "1":
        print(f"neuralda: error: {shown(message)}", file=sys.stderr)  # a name with a newline in it: still one line
    else:
        time.sleep(OTHER_RANKS_WAIT)
    return 2


if __name__ == "__main__":
    sys.exit(main())
