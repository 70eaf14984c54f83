import json
import subprocess
import sys

import pytest

from conftest import make_poems, write_jsonl
from neuralda.corpus import Poem, corpus_stats, import_files, normalize_text, read_corpus, split_poems, write_corpus
from neuralda.errors import NeuraldaError


def test_normalize_line_ends_spaces_and_blank_lines():
    text = "  first line  \r\nsecond\tline\t\r\r\n\n\n\nnew stanza\n\n"
    assert normalize_text(text) == "first line\nsecond line\n\nnew stanza"


def test_normalize_repairs_mojibake_and_keeps_curly_quotes():
    broken = "the sky’s".encode("utf-8").decode("cp1252") + " “blue”"  # the seed's sample printed skyâ€™s
    assert broken == "the skyâ€™s “blue”"
    assert normalize_text(broken) == "the sky’s “blue”"
    assert normalize_text("“already fine” — isn’t it") == "“already fine” — isn’t it"


def test_normalize_nfc():
    assert normalize_text("cafe\u0301") == "caf\u00e9"


def test_read_corpus_and_write_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", make_poems(3) + [{"text": "only text", "source": "somewhere"}])
    poems = read_corpus(path)
    assert len(poems) == 4 and poems[3].url == "somewhere" and poems[3].title == ""
    write_corpus(tmp_path / "out.jsonl", poems)
    assert read_corpus(tmp_path / "out.jsonl") == poems


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no poems"),
        (b'{"text": "a"}\nnot json\n', r"c\.jsonl:2: not valid JSON"),
        (b'{"title": "no text"}\n', r"c\.jsonl:1: expected an object"),
        (b"\x00\x01\x02binary\x00" * 100, "binary"),
    ],
)
def test_read_corpus_errors(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(NeuraldaError, match=message):
        read_corpus(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(NeuraldaError, match="no such file"):
        read_corpus(tmp_path / "nope.jsonl")


def test_import_plain_text_splits_on_two_blank_lines(tmp_path):
    path = tmp_path / "poems.txt"
    path.write_text("First poem\nline two\n\nstanza two\n\n\nSecond poem\nline\n\n\n\n\nThird\n", encoding="utf-8")
    poems = import_files([path], author="Me")
    assert [p.text for p in poems] == ["First poem\nline two\n\nstanza two", "Second poem\nline", "Third"]
    assert {p.author for p in poems} == {"Me"}


def test_import_gutenberg_drops_header_and_footer(tmp_path):
    path = tmp_path / "pg.txt"
    path.write_text(
        "The Project Gutenberg eBook of Test\nlicense words\n*** START OF THE PROJECT GUTENBERG EBOOK TEST ***\n"
        "A poem\nof two lines\n\n\nAnother poem\n*** END OF THE PROJECT GUTENBERG EBOOK TEST ***\nmore license\n",
        encoding="utf-8",
    )
    poems = import_files([path])
    assert [p.text for p in poems] == ["A poem\nof two lines", "Another poem"]


def test_import_jsonl_any_objects_with_text_and_cp1252_text(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "one", "extra": 1}, {"text": "two"}])
    latin = tmp_path / "b.txt"
    latin.write_bytes("la canción del río\ny el mar".encode("cp1252"))
    poems = import_files([jsonl, latin], author="X")
    assert [p.text for p in poems] == ["one", "two", "la canción del río\ny el mar"]


def test_import_unknown_format(tmp_path):
    with pytest.raises(NeuraldaError, match="unknown format"):
        import_files([tmp_path / "x"], fmt="pdf")


def test_split_is_by_whole_poem_and_deterministic():
    poems = [Poem(title=str(i), author="", text=f"poem {i}") for i in range(50)]
    train, val = split_poems(poems, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert {p.text for p in train}.isdisjoint({p.text for p in val})
    assert split_poems(poems, 0.1, seed=3) == (train, val)
    assert split_poems(poems, 0.1, seed=4)[1] != val


def test_split_too_small_suggests_no_validation():
    with pytest.raises(NeuraldaError, match="--val-fraction 0"):
        split_poems([Poem("a", "", "only one")], 0.1, seed=0)
    assert split_poems([Poem("a", "", "only one")], 0.0, seed=0)[1] == []


def test_stats():
    poems = [Poem("", "", "Love the sea,\nlove the salt.")]
    s = corpus_stats(poems)
    assert s["poems"] == 1 and s["lines"] == 2 and s["words"] == 6
    assert s["tokens"] == 10  # 6 words, 2 marks, a line break, the poem break
    assert s["most_common"][:2] == [("love", 2), ("the", 2)]
    assert s["words_once"] == 2


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "neuralda", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_import_and_stats(tmp_path):
    src = tmp_path / "poems.txt"
    src.write_text("one poem\n\n\nanother poem\n", encoding="utf-8")
    out = tmp_path / "corpus.jsonl"
    assert _cli("corpus", "import", str(src), "-o", str(out)).returncode == 0
    result = _cli("corpus", "stats", str(out), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["poems"] == 2


@pytest.mark.parametrize("content", [None, b"", b"{broken\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00"])
def test_cli_bad_corpus_is_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_bytes(content)
    result = _cli("corpus", "stats", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("neuralda: error:")
    assert "Traceback" not in result.stderr
