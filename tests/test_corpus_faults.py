"""Corpus faults through the command line: what a user's odd files do to ``corpus import``, ``corpus stats``, ``train``.

Each either works or ends in one ``neuralda: error: ...`` line and exit code 2; none loses a file the user had.
"""

import json
import os
import random
import stat
import threading

import pytest

from conftest import LINES
from neuralda.cli import main
from neuralda.corpus import read_corpus

TINY_TRAIN = ["--epochs", "1", "--hidden", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "8"]
TINY_TRAIN += ["--device", "cpu", "-q"]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    assert err.startswith("neuralda: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err


def import_one(capsys, tmp_path, data: bytes, *options) -> list[dict]:
    src = tmp_path / "in.txt"
    src.write_bytes(data)
    out = tmp_path / "corpus.jsonl"
    code, _, err = run(capsys, "corpus", "import", src, "-o", out, "--force", *options)
    assert code == 0, err
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def stats(capsys, corpus) -> dict:
    code, out, err = run(capsys, "corpus", "stats", corpus, "--json")
    assert code == 0, err
    return json.loads(out)


def test_one_poem_imports_counts_and_trains_without_a_validation_split(capsys, tmp_path):
    [poem] = import_one(capsys, tmp_path, b"love is a lamp left burning by the sea,\nthe salt wind sings\n")
    assert poem["text"] == "love is a lamp left burning by the sea,\nthe salt wind sings"
    corpus = tmp_path / "corpus.jsonl"
    assert stats(capsys, corpus)["poems"] == 1
    code, _, err = run(capsys, "train", corpus, "-o", tmp_path / "run", *TINY_TRAIN)
    assert_user_error(code, err, "1 poem", "too few for a validation split", "--val-fraction 0")
    assert not (tmp_path / "run").exists()
    code, _, err = run(capsys, "train", corpus, "-o", tmp_path / "run", "--val-fraction", "0", *TINY_TRAIN)
    assert code == 0, err
    assert (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("data", [b"", b"\n\n\n", b"  \t \r\n \r\n\n   ", b"\xef\xbb\xbf\n \n"], ids=repr)
@pytest.mark.parametrize("fmt", ["auto", "text", "jsonl"])
def test_no_poems_is_a_one_line_error_everywhere(capsys, tmp_path, data, fmt):
    src = tmp_path / "empty.txt"
    src.write_bytes(data)
    code, _, err = run(capsys, "corpus", "import", src, "-o", tmp_path / "corpus.jsonl", "--format", fmt)
    assert_user_error(code, err, "empty.txt", "no poems")
    assert not (tmp_path / "corpus.jsonl").exists()
    assert_user_error(*run(capsys, "corpus", "stats", src)[::2], "no poems")
    code, _, err = run(capsys, "train", src, "-o", tmp_path / "run", *TINY_TRAIN)
    assert_user_error(code, err, "no poems")
    assert not (tmp_path / "run").exists()


def test_a_5_mb_poem_on_one_line_imports_and_counts(capsys, tmp_path):
    rng = random.Random(0)
    ascii_lines = [line for line in LINES if line.isascii()]
    words = " ".join(rng.choice(ascii_lines) for _ in range(150_000))[:5_000_000].rsplit(" ", 1)[0]
    assert len(words) > 4_990_000 and "\n" not in words
    # 0.5 s to import and 2 s to count here (with accents, whose repair ftfy checks: 4 s and 3.5 s), linear in the
    # line's length; speed is the benchmarks' to check, and a quadratic step would take hours.
    [poem] = import_one(capsys, tmp_path, words.encode() + b"\n")
    counted = stats(capsys, tmp_path / "corpus.jsonl")
    assert poem["text"] == words and 0 < len(poem["title"]) <= 80 and poem["title"] in words
    assert counted["poems"] == 1 and counted["lines"] == 1 and counted["words"] > 800_000


def test_nul_bytes_in_text_are_dropped(capsys, tmp_path):
    """A few NUL bytes (a bad copy, a stray keystroke) are dropped wherever they are in a file; a file more
    than 1% NUL is binary, or UTF-16 without a BOM, and an error."""
    poems = import_one(capsys, tmp_path, b"lo\x00ve is a lamp\x00\n\n\n" + b"a" * 300 + b"\nthe\x00 sea\n")
    assert [p["text"] for p in poems] == ["love is a lamp", "a" * 300 + "\nthe sea"]
    # In JSONL: a raw NUL byte inside a string (not valid JSON as it is) and a \u0000 escape.
    rows = b'{"text": "the salt\x00 wind, ' + b"x" * 200 + b'"}\n{"text": "bread\\u0000 and stone"}\n'
    poems = import_one(capsys, tmp_path, rows)
    assert [p["text"] for p in poems] == ["the salt wind, " + "x" * 200, "bread and stone"]
    assert stats(capsys, tmp_path / "corpus.jsonl")["poems"] == 2
    src = tmp_path / "utf16.txt"
    src.write_bytes("love is a lamp\n".encode("utf-16-le"))
    code, _, err = run(capsys, "corpus", "import", src, "-o", tmp_path / "other.jsonl")
    assert_user_error(code, err, "utf16.txt", "binary")


POEMS_IN_TWO_ENCODINGS = [
    ("una canción de amor\nbajo el río", "utf-8"),
    ("el corazón del río\ndéjà vu — “quoted”", "cp1252"),
    ("mañana será otro día", "utf-8"),
    ("¿Puedo escribir los versos más tristes?\nAño, niño, señor", "cp1252"),
]


def test_mixed_utf8_and_cp1252_text_file(capsys, tmp_path):
    data = b"".join(text.encode(encoding) + b"\n\n\n" for text, encoding in POEMS_IN_TWO_ENCODINGS)
    poems = import_one(capsys, tmp_path, data)
    assert [p["text"] for p in poems] == [text for text, _ in POEMS_IN_TWO_ENCODINGS]
    assert stats(capsys, tmp_path / "corpus.jsonl")["poems"] == 4


def test_mixed_utf8_and_cp1252_jsonl(capsys, tmp_path):
    data = b"".join(
        json.dumps({"title": text[:5], "text": text}, ensure_ascii=False).encode(encoding) + b"\n"
        for text, encoding in POEMS_IN_TWO_ENCODINGS
    )
    poems = import_one(capsys, tmp_path, data)
    assert [(p["title"], p["text"]) for p in poems] == [(text[:5], text) for text, _ in POEMS_IN_TWO_ENCODINGS]
    src = tmp_path / "in.txt"  # the same file read as a corpus, as train and stats read one
    assert stats(capsys, src)["poems"] == 4


def test_every_poem_identical_imports_counts_and_trains_without_a_validation_split(capsys, tmp_path):
    poem = "love is a lamp left burning by the sea,\nthe salt wind sings of bread and stone;"
    poems = import_one(capsys, tmp_path, (poem + "\n\n\n").encode() * 12)
    assert [p["text"] for p in poems] == [poem] * 12  # kept: a poet may repeat a poem on purpose
    counted = stats(capsys, tmp_path / "corpus.jsonl")
    assert counted["poems"] == 12 and counted["words"] == 12 * 17 and counted["words_once"] == 0
    # A held-out copy would be a poem the model trained on: there is nothing to hold out.
    code, _, err = run(capsys, "train", tmp_path / "corpus.jsonl", "-o", tmp_path / "run", *TINY_TRAIN)
    assert_user_error(code, err, "12 poem(s) (1 different)", "too few for a validation split", "--val-fraction 0")
    assert not (tmp_path / "run").exists()
    code, _, err = run(
        capsys, "train", tmp_path / "corpus.jsonl", "-o", tmp_path / "run", "--val-fraction", "0", *TINY_TRAIN
    )
    assert code == 0, err
    assert (tmp_path / "run" / "data" / "val.jsonl").read_text(encoding="utf-8") == ""


def test_a_file_imported_twice_keeps_validation_poems_out_of_training(capsys, tmp_path):
    src = tmp_path / "poems.txt"
    src.write_text("".join(f"{LINES[i]}\n{LINES[(i + 5) % 12]}\n\n\n" for i in range(10)), encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    assert run(capsys, "corpus", "import", src, src, "-o", corpus)[0] == 0
    code, _, err = run(capsys, "train", corpus, "-o", tmp_path / "run", *TINY_TRAIN)
    assert code == 0, err
    train, val = (read_corpus(tmp_path / "run" / "data" / f"{split}.jsonl") for split in ("train", "val"))
    assert len(train) + len(val) == 20 and {p.text for p in val}.isdisjoint(p.text for p in train)


def test_a_file_name_that_is_not_utf8_imports(capsys, tmp_path):
    # A Latin-1 name from an old disk or a zip: Python keeps its stray byte as a lone surrogate, unwritable in UTF-8.
    src = tmp_path / os.fsdecode(b"poemas_ni\xf1o.txt")
    src.write_bytes(b"Poema\nverso\n")
    code, _, err = run(capsys, "corpus", "import", src, "-o", tmp_path / "corpus.jsonl")
    assert code == 0, err
    [poem] = read_corpus(tmp_path / "corpus.jsonl")
    assert (poem.text, poem.url) == ("Poema\nverso", "poemas_ni\ufffdo.txt")


def test_a_corpus_and_a_run_whose_names_are_not_utf8_train_and_write(capsys, tmp_path):
    # config.json records both paths: their stray bytes (lone surrogates) could not be written as UTF-8, a traceback
    # that left a run directory without its config.json.
    corpus = tmp_path / os.fsdecode(b"poemas_ni\xf1o.jsonl")
    corpus.write_text("".join(json.dumps({"text": f"{line}\nand {i}"}) + "\n" for i, line in enumerate(LINES)))
    out = tmp_path / os.fsdecode(b"runs_ni\xf1o")
    code, _, err = run(capsys, "train", corpus, "-o", out, *TINY_TRAIN)
    assert code == 0, err
    code, poems, err = run(capsys, "generate", out, "--n", "1", "--words", "5", "--seed", "1")
    assert code == 0 and poems, err


def test_a_failed_import_leaves_the_existing_corpus_as_it_was(capsys, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "my poem"}\n', encoding="utf-8")
    src = tmp_path / "photo.png"
    src.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    assert_user_error(*run(capsys, "corpus", "import", src, "-o", corpus, "--force")[::2], "photo.png", "binary")
    assert corpus.read_text(encoding="utf-8") == '{"text": "my poem"}\n'


def test_import_does_not_replace_an_existing_corpus(capsys, tmp_path):
    corpus = tmp_path / "neruda.jsonl"
    corpus.write_text('{"text": "hours of scraping"}\n', encoding="utf-8")
    src = tmp_path / "new.txt"
    src.write_text("a new poem\n", encoding="utf-8")
    code, _, err = run(capsys, "corpus", "import", src, "-o", corpus)
    assert_user_error(code, err, "neruda.jsonl", "already exists", "choose another -o")
    assert corpus.read_text(encoding="utf-8") == '{"text": "hours of scraping"}\n'
    code, _, _ = run(capsys, "corpus", "import", corpus, src, "-o", corpus, "--force")  # read first, then replaced
    assert code == 0 and [p.text for p in read_corpus(corpus)] == ["hours of scraping", "a new poem"]


def test_import_force_onto_a_symlink_replaces_the_file_it_points_to(capsys, tmp_path):
    # corpus.jsonl linked to a shared copy: replacing the link with a new file left the shared copy stale.
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "neruda.jsonl"
    target.write_text('{"text": "old"}\n', encoding="utf-8")
    link = tmp_path / "corpus.jsonl"
    link.symlink_to(target)
    src = tmp_path / "new.txt"
    src.write_text("a new poem\n", encoding="utf-8")
    assert run(capsys, "corpus", "import", src, "-o", link, "--force")[0] == 0
    assert link.is_symlink() and [p.text for p in read_corpus(target)] == ["a new poem"]
    assert [f.name for f in target.parent.iterdir()] == ["neruda.jsonl"]  # no temporary file left behind


def test_import_force_onto_a_fifo_writes_into_it_and_keeps_it(capsys, tmp_path):
    # -o /dev/null --force as root renamed a regular file over the device: /dev/null was gone for everyone.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    src = tmp_path / "new.txt"
    src.write_text("a new poem\n", encoding="utf-8")
    assert run(capsys, "corpus", "import", src, "-o", fifo, "--force")[0] == 0
    reader.join(5)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and json.loads(got[0])["text"] == "a new poem"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["new.txt", "pipe"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_import_gives_a_new_corpus_the_mode_of_the_user_s_umask_and_keeps_an_old_one_s(capsys, tmp_path, umask, mode):
    # Under umask 077 a new corpus was 0644 all the same: readable by every user of the machine.
    src = tmp_path / "new.txt"
    src.write_text("a new poem\n", encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    old = os.umask(umask)
    try:
        assert run(capsys, "corpus", "import", src, "-o", corpus)[0] == 0
        assert stat.S_IMODE(corpus.stat().st_mode) == mode
        corpus.chmod(0o640)
        assert run(capsys, "corpus", "import", src, "-o", corpus, "--force")[0] == 0
        assert stat.S_IMODE(corpus.stat().st_mode) == 0o640
    finally:
        os.umask(old)


@pytest.mark.parametrize("text, said", [("a poem\n", "wrote 1 poem to"), ("a poem\n\n\nanother\n", "wrote 2 poems to")])
def test_import_says_how_many_poems_it_wrote(capsys, tmp_path, text, said):
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    code, _, err = run(capsys, "corpus", "import", src, "-o", tmp_path / "corpus.jsonl")
    assert code == 0 and err == f"{said} {tmp_path / 'corpus.jsonl'}\n"


def test_an_import_cleans_up_what_a_killed_import_of_the_same_file_left(capsys, tmp_path):
    """A killed write leaves its temporary file; the next import of that file removes it, and nothing else."""
    left = tmp_path / ".corpus.jsonl.k3_9zq1x.tmp"  # what atomic_write's mkstemp names it
    others = [tmp_path / ".notes.jsonl.k3_9zq1x.tmp", tmp_path / "mine.tmp", tmp_path / ".corpus.jsonl.draft.tmp"]
    for path in (left, *others):
        path.write_text('{"title": "half')
    import_one(capsys, tmp_path, b"a lamp by the sea\n")
    assert not left.exists() and all(p.exists() for p in others)
