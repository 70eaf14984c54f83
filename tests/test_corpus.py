import codecs
import json
import random
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import make_poems, write_jsonl
from neuralda.corpus import (
    FORMATS,
    Poem,
    corpus_stats,
    decode_bytes,
    import_files,
    normalize_text,
    read_corpus,
    split_poems,
    write_corpus,
)
from neuralda.errors import NeuraldaError
from neuralda.tokenizer import tokenize


def test_normalize_line_ends_spaces_and_blank_lines():
    text = "  first line  \r\nsecond\tline\t\r\r\n\n\n\nnew stanza\n\n"
    assert normalize_text(text) == "first line\nsecond line\n\nnew stanza"
    # Word's Shift+Enter, copied out of it, is a vertical tab: a line break, not two words glued together.
    assert normalize_text("the tide is high\vand the moon\v\vis full") == "the tide is high\nand the moon\n\nis full"


def test_normalize_repairs_mojibake_and_keeps_curly_quotes():
    broken = "the sky’s".encode("utf-8").decode("cp1252") + " “blue”"  # the seed's sample printed skyâ€™s
    assert broken == "the skyâ€™s “blue”"
    assert normalize_text(broken) == "the sky’s “blue”"
    assert normalize_text("“already fine” — isn’t it") == "“already fine” — isn’t it"


@pytest.mark.parametrize(
    "text",
    ["ELA É MINHA IRMÃ—E MINHA MÃE", "«AMANHÃ»", "“MAÇÃ”, disse ela", "A IRMÃ – e o mar"],
)
def test_portuguese_in_capitals_is_kept_where_the_poem_is_plainly_utf8(text):
    # A word-final "Ã" before a dash, quote or guillemet is also how "×", "Ô" or "û" look read as cp1252: ftfy made
    # "IRMÃ—E" "IRM×E" and lost the guillemet of "«IRMÃ»", in poems whose "É" or "«" show they are UTF-8.
    assert normalize_text(text) == text


@pytest.mark.parametrize(
    "broken, fixed",
    [
        ("CAFÃ‰ E PÃƒO", "CAFÉ E PÃO"),
        ("AVÃ” DORME", "AVÔ DORME"),
        ("o coração — “skyâ€™s”", "o coração — “sky’s”"),
        # Beside a real "’" or "—" (an HTML entity read right, the letters wrong): "Ã" inside a word is mojibake.
        ("Une flÃ»te dans l’air", "Une flûte dans l’air"),
        ("cafÃ© et flÃ»te dans l’air", "café et flûte dans l’air"),
        ("VIVA ESPAÃ‘A — olé", "VIVA ESPAÑA — olé"),
        ("KÃ–NIG – Lied", "KÖNIG – Lied"),
    ],
)
def test_mojibake_is_still_repaired_in_capitals_and_beside_real_accents(broken, fixed):
    assert normalize_text(broken) == fixed


@pytest.mark.parametrize("text", ["Ã\tAÃ«", "Ã IRMÃ» à", "«AMANHÃ» Ã\t©"])
def test_cleaning_again_changes_nothing_when_a_repair_removes_what_kept_a_mark(text):
    # "Ã\t" showed the text was UTF-8 and kept "AÃ«"; once repaired, cleaning again repaired "AÃ«" too (Hypothesis).
    once = normalize_text(text)
    assert normalize_text(once) == once


def test_normalize_keeps_full_width_marks():
    """ftfy would turn a Chinese poem's "，！（）" into ",!()"; spaces of any width are single plain ones, as in any
    line."""
    assert normalize_text("床前明月光，疑是地上霜！") == "床前明月光，疑是地上霜！"
    assert normalize_text("古池や\u3000蛙飛び込む\u3000水の音（芭蕉）") == "古池や 蛙飛び込む 水の音（芭蕉）"


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
        (b"The rain on the roof\nsings.\n", r"not a JSONL corpus .* `neuralda corpus import .*c\.jsonl -o corpus\.jsonl`"),
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


_SONGS = ["SONG OF THE LARK\nthe lark at dawn\nsings over the wheat", "THE WELL\n\ncold water,\ndeep stone"]


@pytest.mark.parametrize(
    "last_line",
    ["End of the Project Gutenberg EBook of Songs, by A. Poet", "End of Project Gutenberg's Songs, by A. Poet"],
)
@pytest.mark.parametrize(
    "credit",
    [
        ("Produced by Jane Roe and the Online Distributed", "Proofreading Team at http://www.example.net"),
        ("Transcribed from the 1914 Example and Co. edition by Jane Roe, email", "roe@example.net"),
    ],
    ids=["produced-by", "transcribed-from"],
)
def test_import_gutenberg_drops_the_credits_and_the_end_of_book_line(tmp_path, last_line, credit):
    lines = [
        "The Project Gutenberg EBook of Songs, by A. Poet", "", "This eBook is for the use of anyone anywhere", "",
        "*** START OF THIS PROJECT GUTENBERG EBOOK SONGS ***", "", "", "",
        *credit, "", "", "",
        _SONGS[0], "", "", _SONGS[1], "", "", "", last_line, "",
        "*** END OF THIS PROJECT GUTENBERG EBOOK SONGS ***", "", "***** This file should be named 1.txt *****", "",
    ]  # fmt: skip
    path = tmp_path / "pg.txt"
    path.write_bytes(codecs.BOM_UTF8 + "\n".join(lines).replace("\n", "\r\n").encode())  # as Gutenberg writes
    assert [p.text for p in import_files([path])] == _SONGS


def test_import_old_gutenberg_file_whose_licence_ends_with_the_small_print(tmp_path):
    lines = [
        "**The Project Gutenberg Etext of Songs, by A. Poet**", "", "legal words about etexts", "",
        "   *END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*", "", "",
        "This etext was prepared by John Doe.", "", "", "",
        _SONGS[0], "", "", _SONGS[1], "", "", "End of Project Gutenberg Etext of Songs, by A. Poet", "",
    ]  # fmt: skip
    path = tmp_path / "pg.txt"
    path.write_bytes("\n".join(lines).replace("\n", "\r\n").encode("cp1252"))
    for fmt in ("auto", "gutenberg"):
        assert [p.text for p in import_files([path], fmt)] == _SONGS


@pytest.mark.parametrize("blank", ["\u00a0", "\x0c", " \t\u3000"], ids=repr)
def test_a_line_of_any_whitespace_is_a_blank_line(tmp_path, blank):
    path = tmp_path / "poems.txt"
    path.write_text(f"First\nline\n{blank}\nstanza\n{blank}\n{blank}\nSecond\n", encoding="utf-8")
    assert [p.text for p in import_files([path])] == ["First\nline\n\nstanza", "Second"]


def test_cp1252_lines_after_a_utf8_bom_are_read(tmp_path):
    # `cat with_bom.txt cp1252.txt`: the BOM speaks for the first file only.
    path = tmp_path / "poems.txt"
    path.write_bytes(codecs.BOM_UTF8 + "Canción de la tarde\n\n\n".encode() + "Canción del niño\n".encode("cp1252"))
    assert [p.text for p in import_files([path])] == ["Canción de la tarde", "Canción del niño"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_a_utf16_or_utf32_bom_decodes_the_whole_file(encoding):
    text = "Canción del niño\n¿Qué?\n"
    bom = {"utf-16-be": codecs.BOM_UTF16_BE, "utf-32-be": codecs.BOM_UTF32_BE}.get(encoding, b"")
    assert decode_bytes(bom + text.encode(encoding), "f.txt") == text


def test_import_jsonl_any_objects_with_text_and_cp1252_text(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "one", "extra": 1}, {"text": "two"}])
    latin = tmp_path / "b.txt"
    latin.write_bytes("la canción del río\ny el mar".encode("cp1252"))
    poems = import_files([jsonl, latin], author="X")
    assert [p.text for p in poems] == ["one", "two", "la canción del río\ny el mar"]


_SAVED_PAGE = (
    '<!DOCTYPE html><html><head><meta charset="windows-1252"><title>Oda al mar | Poemas</title>'
    "<script>var lines = 'not a poem';</script></head><body><header><header>Poemas</header><p>de amor</p></header>"
    "<nav><a href='/'>Inicio</a></nav><h1>Oda al mar</h1>"
    "<div class='poem'><p>Aquí en la isla<br>el mar y cuánto mar</p><p>se sale de sí mismo</p></div>"
    "<footer>© 2024</footer></body></html>"
).encode("cp1252")


@pytest.mark.parametrize(
    "name, before",
    [("oda.html", b""), ("oda.txt", b""), ("oda", b"<!-- saved from url=x -->\n")],
    ids=["html", "txt", "comment"],
)
def test_import_a_saved_web_page_as_one_poem(tmp_path, name, before):  # known by its name, or by its first tag
    """A page saved from a browser is read as the scraper reads a poem page: its charset, <br> lines and <p>
    stanzas; no banner, navigation, script, footer or heading in the text."""
    page = tmp_path / name
    page.write_bytes(before + _SAVED_PAGE)
    [poem] = import_files([page], author="Pablo Neruda")
    assert (poem.title, poem.author, poem.url) == ("Oda al mar", "Pablo Neruda", name)
    assert poem.text == "Aquí en la isla\nel mar y cuánto mar\n\nse sale de sí mismo"
    [chosen] = import_files([page], title_css="title", body_css="div.poem p:first-child")
    assert (chosen.title, chosen.text) == ("Oda al mar | Poemas", "Aquí en la isla\nel mar y cuánto mar")
    with pytest.raises(NeuraldaError, match="--body"):
        import_files([page], body_css="div[")
    with pytest.raises(NeuraldaError, match="no poems found"):
        import_files([page], body_css="div.missing")


def test_an_empty_json_export_has_no_poems(tmp_path):
    path = tmp_path / "export.json"
    path.write_text("[]\n")
    with pytest.raises(NeuraldaError, match="no poems"):
        import_files([path])


def test_a_validation_split_of_every_poem_says_how_much_is_possible():
    poems = [Poem("", "", f"poem {i}") for i in range(30)]
    with pytest.raises(NeuraldaError, match="would hold out all 30 poems; use at most 0.966,"):
        split_poems(poems, 0.99, 0)


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


def _split_by_position(poems: list[Poem], val_fraction: float, seed: int) -> tuple[list[Poem], list[Poem]]:
    """The rule before copies were kept together: the first round(n * fraction) of a seeded shuffle (at least one)."""
    order = list(range(len(poems)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(len(poems) * val_fraction))])
    return [p for i, p in enumerate(poems) if i not in held], [p for i, p in enumerate(poems) if i in held]


@pytest.mark.parametrize("val_fraction", [0.05, 0.1, 0.3])
def test_split_without_copies_is_what_it_was(val_fraction):
    # Runs already made, and the numbers measured on them, hold out these poems.
    poems = [Poem(str(i), "", f"poem {i}") for i in range(47)]
    for seed in range(20):
        assert split_poems(poems, val_fraction, seed) == _split_by_position(poems, val_fraction, seed)


def test_split_keeps_the_copies_of_a_poem_on_one_side():
    # One file imported twice, overlapping anthologies, a poem scraped from two pages.
    texts = [f"poem {i}" for i in range(30)] + [f"poem {i}" for i in range(0, 30, 3)] + ["poem 7"] * 5
    poems = [Poem("", "", text) for text in texts]
    for seed in range(30):
        train, val = split_poems(poems, 0.1, seed)
        assert {p.text for p in val}.isdisjoint(p.text for p in train)
        assert 1 <= len(val) <= 5 and sorted(p.text for p in train + val) == sorted(texts)
        assert split_poems(poems, 0.1, seed) == (train, val)


def test_split_keeps_copies_that_differ_in_case_or_quotes_on_one_side():
    # Training lower-cases by default: "THE SEA" held out beside a trained "the sea" is a poem training saw.
    texts = [f"the sea’s poem {i}\nline" for i in range(20)]
    poems = [Poem("", "", t) for t in texts] + [Poem("", "", t.upper().replace("’", "'")) for t in texts[:10]]
    for seed in range(30):
        train, val = split_poems(poems, 0.2, seed)
        seen = {p.text.lower().replace("’", "'") for p in train}
        assert not any(p.text.lower().replace("’", "'") in seen for p in val)


def test_split_holds_out_a_poem_with_all_its_copies_when_each_has_more_than_validation_wants():
    poems = [Poem("", "", text) for text in ["sea", "salt", "sea", "stone", "salt", "stone", "stone"]]
    train, val = split_poems(poems, 0.1, seed=0)  # one poem wanted; each has two or three copies
    assert len(val) == 2 and len({p.text for p in val}) == 1
    assert {p.text for p in val}.isdisjoint(p.text for p in train)


def test_split_too_small_suggests_no_validation():
    with pytest.raises(NeuraldaError, match="--val-fraction 0"):
        split_poems([Poem("a", "", "only one")], 0.1, seed=0)
    assert split_poems([Poem("a", "", "only one")], 0.0, seed=0)[1] == []
    with pytest.raises(NeuraldaError, match=r"3 poem\(s\) \(1 different\).*--val-fraction 0"):
        split_poems([Poem("a", "", "the same")] * 3, 0.5, seed=0)


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


# --- properties: any text cleans to what normalize_text promises; any file imports as clean poems or a user error ---

# Any code point (lone surrogates too), with the pieces of mojibake, line ends and controls ftfy and we look at.
_TRICKY = "Ãƒâ€™Â©é\xa0\t\n\r\x00\x0b\x0c\u0301\u2028\x85\x93\x1c\x1b\ufeff\u200b\x9d\x81Å“\ud800\xad\u2010\u2011\u2060"
_CHARS = st.one_of(st.characters(), st.sampled_from(_TRICKY))


def _misread(text: str, codec: str) -> str:
    """``text``'s UTF-8 read as ``codec``: the mojibake ftfy repairs."""
    return text.encode("utf-8", "surrogatepass").decode(codec, "replace")


_TEXTS = st.one_of(st.text(_CHARS), st.builds(_misread, st.text(_CHARS), st.sampled_from(["latin-1", "cp1252"])))


def assert_clean(text: str) -> None:
    """What normalize_text promises of its result."""
    assert "\r" not in text and "\x00" not in text
    assert not set(text) & set("\xad\u200b\u2060\u2010\u2011")  # invisible in a word, or a hyphen unlike "-"
    assert not [c for c in text if unicodedata.category(c) in ("Cc", "Cs") and c != "\n"]
    assert text == text.strip("\n") and "\n\n\n" not in text  # no blank line at either end, one between stanzas
    assert all(line == " ".join(line.split()) for line in text.split("\n"))  # single spaces, none at the ends
    assert unicodedata.is_normalized("NFC", text)
    assert normalize_text(text) == text


@settings(max_examples=150, deadline=None)
@given(_TEXTS)
# ftfy's repairs uncovered more to repair, or our tidying did: each of these took two cleanings to settle.
@example("Ã\t©")
@example("Â\t0")
@example("Â Â\x1b\x80")
@example("\x80\rÀµ")
@example("\x80\r\x80¨")
@example("e\x00\u0301")
def test_normalize_text_is_clean_and_idempotent(text):
    assert_clean(normalize_text(text))


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


_GUTENBERG_PARTS = [
    "\n\n\n",
    "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n",
    "*** END OF THE PROJECT GUTENBERG EBOOK X ***\n",
    '{"text": "a poem"}\n',
]
_FILES = st.one_of(
    st.binary(),
    st.text(_CHARS).map(lambda t: t.encode("utf-8", "surrogatepass")),
    _TEXTS.map(lambda t: t.encode("cp1252", "replace")),
    st.lists(st.fixed_dictionaries({"text": _TEXTS}, optional={"title": _TEXTS, "author": _TEXTS})).map(_jsonl_bytes),
    st.lists(st.one_of(st.text(_CHARS), st.sampled_from(_GUTENBERG_PARTS))).map(
        lambda parts: "".join(parts).encode("utf-8", "surrogatepass")
    ),
)


def _assert_corpus(poems: list[Poem], tmp_path) -> None:
    assert poems
    for poem in poems:
        assert poem.text
        assert_clean(poem.text)
        for field in (poem.title, poem.author, poem.url):
            assert field == " ".join(field.split())  # one line
    write_corpus(tmp_path / "out.jsonl", poems)
    assert read_corpus(tmp_path / "out.jsonl") == poems


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_FILES, fmt=st.sampled_from(FORMATS))
def test_any_file_imports_as_clean_poems_or_a_one_line_error(tmp_path, data, fmt):
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    for read in (lambda: import_files([path], fmt), lambda: read_corpus(path)):
        try:
            poems = read()
        except NeuraldaError as e:
            assert str(e) and "\n" not in str(e)
            continue
        _assert_corpus(poems, tmp_path)


# --- what the properties found, and the file faults behind them ---


def test_a_corpus_written_with_line_separators_in_a_title_reads_back(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 and U+0085 as they are; str.splitlines() broke the line there.
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"title": "a\u2028b", "author": "x\x85y", "text": "one\u2029two"}, ensure_ascii=False))
    [poem] = read_corpus(path)
    assert (poem.title, poem.author, poem.text) == ("a b", "xy", "one\ntwo")
    write_corpus(tmp_path / "out.jsonl", [Poem("a\u2028b", "x\x85y", "love")])
    assert read_corpus(tmp_path / "out.jsonl")[0].title == "a b"


def test_lone_surrogates_and_odd_fields_become_clean_strings(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(r'{"text": "bad \ud800 half", "title": "t\udc00", "fetched_at": 5}' + "\n", encoding="utf-8")
    [poem] = read_corpus(path)
    assert (poem.text, poem.title, poem.fetched_at) == ("bad \ufffd half", "t\ufffd", "5")
    write_corpus(tmp_path / "out.jsonl", [poem])  # encodable as UTF-8
    assert read_corpus(tmp_path / "out.jsonl") == [poem]


@pytest.mark.parametrize(
    "text, encoding",
    [
        ("el corazón del río\ndéjà vu — “quoted”", "cp1252"),  # charset_normalizer alone said cp1250: "déjŕ"
        ("Minha terra tem palmeiras, onde canta o sabiá;\nas aves que aqui gorjeiam não gorjeiam como lá.", "cp1252"),
        ("Demain, dès l'aube, à l'heure où blanchit la campagne,\nJe partirai.", "cp1252"),
        ("Litwo! Ojczyzno moja! ty jesteś jak zdrowie.\nIle cię trzeba cenić, kto cię stracił.", "cp1250"),
        ("Я помню чудное мгновенье:\nПередо мной явилась ты,", "cp1251"),
        ("床前明月光，疑是地上霜。\n举头望明月，低头思故乡。", "gbk"),
        ("łódź", "cp1250"),  # charset_normalizer's first guess: UTF-16, "돳撟"
    ],
)
def test_legacy_encodings_are_read(text, encoding):
    assert decode_bytes(text.encode(encoding), "f.txt") == text


# A few lines each, in the encodings their languages' files were written in; guessed without a language, the first
# four came out as Thai, Korean, Cyrillic and cp1252 ("hatýrlýyorum").
_LEGACY_BY_LANGUAGE = [
    ("海の夜に塩の風が歌う\n私は灯りを見つめていた\n", "euc_jp", "ja"),
    ("海の夜に塩の風が歌う\n私は灯りを見つめていた\n", "shift_jis", "ja"),
    ("אני זוכר את הים ואת מלח הלילה\n", "cp1255", "he"),
    ("Denizi ve gecenin tuzunu hatırlıyorum, rüzgâr şarkı söyledi.\n", "cp1254", "tr"),
    ("Я помню море и ночную соль,\nи ветер пел над тёмною водой.\n", "koi8_r", "ru"),
    ("海上的夜晚，鹽風在歌唱\n我看著燈火\n", "big5", "zh-TW"),
    ("ฉันจำทะเลและเกลือของค่ำคืนได้\n", "cp874", "th"),
    ("Recuerdo el mar y la sal de la noche, ¿qué canción?\n", "cp1252", "es"),  # no list: cp1252 as before
]


@pytest.mark.parametrize("text, encoding, lang", _LEGACY_BY_LANGUAGE)
def test_a_language_reads_a_short_file_in_its_own_legacy_encodings(text, encoding, lang):
    assert decode_bytes(text.encode(encoding), "f.txt", lang) == text


@pytest.mark.parametrize("kind", ["txt", "html", "jsonl"])
def test_import_reads_a_legacy_file_in_the_language_it_is_told(tmp_path, kind):
    text = "Denizi hatırlıyorum,\nrüzgâr şarkı söyledi."
    path = tmp_path / f"mar.{kind}"
    content = {"txt": text, "html": f"<html><body><p>{text}</p></body></html>", "jsonl": json.dumps({"text": text}, ensure_ascii=False)}
    path.write_bytes(content[kind].encode("cp1254"))
    [poem] = import_files([path], lang="tr")
    assert poem.text.replace("\n", " ") == text.replace("\n", " ") and poem.lang == "tr"


@pytest.mark.parametrize("sign", ["´", "½", "§", "×", "¢", "±", "®", "÷", "™"])
def test_a_western_sign_among_ascii_keeps_a_file_cp1252(sign):
    """A Spanish keyboard's ´ (or ½, §...) in one line sent a Latin-1 file to charset_normalizer, which read its ñ
    as cp1250's ń, or the whole text as Japanese. (A "£" or "¼" is a letter in cp1250: Polish text has them.)"""
    text = f"El tren de las 11{sign}30\nno para en este pueblo;\nlos niños le saludan,\ny la señora Inés\ncierra los ojos."
    assert decode_bytes(text.encode("cp1252"), "f.txt") == text
    assert decode_bytes(f"{sign} medio kilo de pan\n".encode("cp1252"), "f.txt") == f"{sign} medio kilo de pan\n"


@pytest.mark.parametrize("line", ["at ¾ past nine", "o mar ³ e o céu ¹", "Il était une fois ¾ de lune", "11¼ miles"])
def test_a_sign_that_is_a_letter_in_cp1250_keeps_a_file_cp1252_where_no_letter_touches_it(line):
    # "¾" is Slovak "ľ" in cp1250: it sent the file to a guess that read it as Shift_JIS ("at ｾ past nine").
    text = "The moon was high above the sea,\nand I was walking home to thee,\n" * 6 + line + "\n"
    assert decode_bytes(text.encode("cp1252"), "f.txt") == text
    assert decode_bytes(f"{line}\n".encode("cp1252"), "f.txt") == f"{line}\n"


# Too short for charset_normalizer, which guessed UTF-16 ("뽑痩㼊"), Big5 ("匜") and Urdu ("Olﻠ, olﻠ").
@pytest.mark.parametrize("line", ["¿Qué?\n", "Él\n", "Déjà vu\n", "Olé, olé\n"])
@pytest.mark.parametrize("before", ["", "uno\ndos\n"], ids=["alone", "after UTF-8 lines"])
def test_a_short_cp1252_line_is_read(line, before):
    assert decode_bytes(before.encode() + line.encode("cp1252"), "f.txt") == before + line


def test_gutenberg_end_before_start_is_not_the_end(tmp_path):
    path = tmp_path / "pg.txt"
    path.write_text(
        "Note: *** END OF THE PROJECT GUTENBERG EBOOK *** marks the end\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK X ***\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n"
        "A poem\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\n",
        encoding="utf-8",
    )
    assert [p.text for p in import_files([path], "gutenberg")] == ["A poem"]


def test_jsonl_files_joined_with_cat_keep_each_files_bom(tmp_path):
    # `cat a.jsonl b.jsonl` where b.jsonl came from Windows: its UTF-8 BOM sits at the start of a middle line.
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "uno"}\n' + codecs.BOM_UTF8 + b'{"text": "dos"}\r\n' + codecs.BOM_UTF8 + b"\n")
    assert [p.text for p in read_corpus(path)] == ["uno", "dos"]


@pytest.mark.parametrize(
    "line",
    ['{"text": "a", "id": ' + "1" * 5000 + "}", '{"text": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"],
    ids=["a number past Python's 4300 digits", "nesting past the recursion limit"],
)
def test_json_python_cannot_read_is_a_line_error(tmp_path, line):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(NeuraldaError, match=r"c\.jsonl:2: JSON too big to read \((Exceeds|maximum recursion)"):
        read_corpus(path)


@pytest.mark.parametrize("invisible", ["\u00ad", "\u200b", "\u2060"], ids=["soft hyphen", "zero-width space", "joiner"])
def test_invisible_breaks_from_web_pages_are_dropped(invisible):
    # Sites hyphenate with &shy; and WordPress leaves zero-width spaces: unseen, they split "poema" in three tokens.
    assert normalize_text(f"el poe{invisible}ma\ncan{invisible}ción") == "el poema\ncanción"
    assert Poem.from_dict({"text": "x", "title": f"Can{invisible}to"}).title == "Canto"


def test_a_list_of_authors_is_a_list_not_python_syntax():
    poem = Poem.from_dict({"text": "x", "author": ["Pablo Neruda", "Gabriela Mistral"], "title": ["Oda"]})
    assert (poem.author, poem.title) == ("Pablo Neruda, Gabriela Mistral", "Oda")


def test_unicode_hyphens_become_the_hyphen_so_the_word_stays_one_word():
    # Word processors and web typography write U+2010 and the no-break U+2011: they look like "-" but split words.
    text = normalize_text("earth\u2010star y medio\u2011día")
    assert text == "earth-star y medio-día"
    assert tokenize(text, end=False) == ["earth-star", "y", "medio-día"]


def test_a_json_array_export_imports_as_poems_not_as_one_poem_of_json(tmp_path):
    # Exports are often one JSON array, pretty-printed: it was read as plain text, one "poem" of brackets and quotes.
    rows = [{"title": "Poema 20", "text": "Puedo escribir los versos\nmás tristes esta noche."}, {"text": "Amo el amor"}]
    path = tmp_path / "poems.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    for poems in (import_files([path]), read_corpus(path)):
        assert [(p.title, p.text) for p in poems] == [(r.get("title", ""), r["text"]) for r in rows]
    path.write_text('[\n  {"text": "uno"},\n  {"text": "dos"\n]\n', encoding="utf-8")
    with pytest.raises(NeuraldaError, match=r"poems\.json:4: not valid JSON"):
        import_files([path])
    path.write_text('[\n  {"text": "uno"},\n  "dos"\n]\n', encoding="utf-8")
    with pytest.raises(NeuraldaError, match=r"poems\.json: item 2: expected an object"):
        read_corpus(path)


@pytest.mark.parametrize("title", ["[Sin título]", "{Untitled}", "{ sin título }"])
def test_a_poem_in_brackets_or_braces_is_still_plain_text(tmp_path, title):
    path = tmp_path / "poems.txt"
    path.write_text(f"{title}\nla noche\n", encoding="utf-8")
    assert [p.text for p in import_files([path])] == [f"{title}\nla noche"]


def test_two_blank_lines_inside_a_poem_are_one_stanza_break():
    """A poem's text never keeps two blank lines in a row (they would make an empty line token)."""
    assert normalize_text("first\n\n\nsecond\n \n\n \nthird") == "first\n\nsecond\n\nthird"


def test_a_file_a_few_percent_nul_is_binary():
    """More than 1% NUL bytes is a binary file, not a text with a few stray NULs to drop."""
    with pytest.raises(NeuraldaError, match="binary"):
        decode_bytes(b"the sea and the salt\n" * 5 + b"\x00" * 5, "f.txt")


def test_plain_text_poems_are_titled_by_their_first_line(tmp_path):
    """A plain-text poem's title is its first line, up to 80 characters."""
    path = tmp_path / "poems.txt"
    long = "a very long first line that goes on and on about the sea, the salt, the stone and the night wind"
    path.write_text(f"The Song of the Salt Wind\nline\n\n\n{long}\nline\n", encoding="utf-8")
    assert [p.title for p in import_files([path])] == ["The Song of the Salt Wind", long[:80].rstrip()]


def test_a_saved_page_without_a_doctype_is_known_by_its_name(tmp_path):
    """A .html file that starts with a plain tag is still a web page: its tags never reach the poem."""
    page = tmp_path / "poem.html"
    page.write_text("<div>the sea at night<br>the salt wind</div>", encoding="utf-8")
    assert [p.text for p in import_files([page])] == ["the sea at night\nthe salt wind"]


def test_author_replaces_the_author_of_imported_jsonl(tmp_path):
    """--author applies to JSONL records too, not only to text files."""
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "one", "author": "Someone"}, {"text": "two"}])
    assert {p.author for p in import_files([jsonl], author="Pablo Neruda")} == {"Pablo Neruda"}


def test_an_initial_of_a_cp1250_letter_still_reads_as_cp1250():
    text = "Ľ. Štúr: Báseň o láske\nKeď príde jeseň"  # "Ľ." is "¼." in cp1252: a letter, not a sign
    assert decode_bytes(text.encode("cp1250"), "f.txt") == text


def test_a_carriage_return_before_a_vertical_tab_is_one_line_break():
    assert normalize_text("a line\r\vnext line") == "a line\nnext line"


@pytest.mark.parametrize("separator", ["\v\v\v", "\u2029\u2029\u2029", "\u2028\u2028\u2028"])
def test_poems_parted_by_other_line_breaks_are_two_poems(tmp_path, separator):
    path = tmp_path / "poems.txt"
    path.write_text(f"First poem{separator[0]}line two{separator}Second poem", encoding="utf-8")
    assert [p.text for p in import_files([path])] == ["First poem\nline two", "Second poem"]


def test_a_file_with_old_mac_line_ends_splits_into_poems(tmp_path):
    """Lines ending in a lone CR (classic Mac OS) are lines: two blank ones still part poems."""
    path = tmp_path / "poems.txt"
    path.write_bytes(b"First poem\rline two\r\r\rSecond poem\r")
    assert [p.text for p in import_files([path])] == ["First poem\nline two", "Second poem"]


def test_stats_vocabulary_counts_every_distinct_token_and_lines_skip_stanza_breaks():
    """vocabulary: distinct tokens (marks and breaks too); distinct_words: words only; a stanza break is no line."""
    s = corpus_stats([Poem("", "", "Love the sea,\nlove the salt.")])
    assert s["vocabulary"] == 8 and s["distinct_words"] == 4
    assert corpus_stats([Poem("", "", "sea\nsalt\n\nstone")])["lines"] == 3


def test_a_poems_language_comes_from_its_page_its_record_or_lang(tmp_path):
    """The language travels with each poem (the page's nearest lang, a record's "lang", or --lang for all), so that
    pages showing the model's poems can say it; something that is no language tag is dropped, not kept."""
    page = tmp_path / "poema.html"
    page.write_text('<html lang="es"><body><h1 lang="en">Ode</h1><p>mar y sal<br>la sal del mar</p></body></html>')
    mixed = tmp_path / "mixed.html"
    mixed.write_text('<html lang="en"><body><div class="poem" lang="pt-BR"><p>o mar</p></div></body></html>')
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "one", "lang": "fr"}, {"text": "two", "lang": "French"}])
    assert [p.lang for p in import_files([page, jsonl])] == ["es", "fr", None]
    assert [p.lang for p in import_files([mixed], body_css="div.poem")] == ["pt-BR"]
    assert {p.lang for p in import_files([page, jsonl], lang="gl")} == {"gl"}
    assert "lang" not in Poem("", "", "one").to_dict()  # corpora without languages are written as before
    with pytest.raises(NeuraldaError, match="^--lang must be a language tag such as es or pt-BR, got 'Spanish'$"):
        import_files([page], lang="Spanish")


def test_stats_count_a_big_corpus_without_holding_each_of_its_tokens():
    """corpus stats counts each poem's tokens as it reads them: a list of every token took ~90 bytes a token (450 MB
    at five million)."""
    import tracemalloc
    from collections import Counter

    line = "the sea, the salt and the moon over the water"
    poems = [Poem("", "", "\n".join([line] * 10) + f" {i}") for i in range(1000)]
    tokens = [t for p in poems for t in tokenize(p.text)]
    tracemalloc.start()  # Python's own allocations: every token a string of its own, or only what is counted
    try:
        stats = corpus_stats(poems)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(tokens), f"{peak / len(tokens):.0f} bytes a token"
    assert stats["tokens"] == len(tokens) and stats["vocabulary"] == len(Counter(tokens))
    assert stats["most_common"][:2] == [("the", 40000), ("sea", 10000)]
