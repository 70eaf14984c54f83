"""Poem records, JSONL corpora, importers, text cleaning and poem-level splits."""

from __future__ import annotations

import codecs
import json
import math
import random
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import NeuraldaError, listed
from .files import atomic_write

FORMATS = ("auto", "jsonl", "text", "gutenberg", "html")

_BLANK_RUN = re.compile(r"\n{3,}")
# C0 controls but tab, line feed, form feed and carriage return; DEL; the C1 controls ftfy could not read as cp1252.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
# Invisible hints a web page leaves in a word (&shy;, zero-width spaces, word joiners): unseen, yet they split it.
_INVISIBLE = re.compile("[\u00ad\u200b\u2060]")
# U+2010 and the no-break U+2011 look like "-" but are other tokens: "earth‐star" would not be "earth-star".
_HYPHENS = str.maketrans("\u2010\u2011", "--")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # half a UTF-16 pair, from a JSON "\ud800" escape: U+FFFD, as ftfy does
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
_CP1252_MARKS = set("\xa0¡¿«»“”‘’–—…°ºª·•©€")  # not letters, but at home in Western European text
# Another sign among ASCII, as Western European text has one ("11´30", "½ kilo", "§ 3"): one whose byte is a sign
# in cp1250 and cp1257 too ("£" is their "Ł", "³" Polish "ł"), and alone, where a multi-byte encoding read as cp1252
# puts signs next to other non-ASCII characters ("‚±‚ñ").
_CP1252_SIGNS = [
    c for c in (bytes([b]).decode("cp1252", "ignore") for b in range(0x80, 0x100)) if c and not c.isalpha()
]
_LONE_SIGNS = frozenset(
    c for c in _CP1252_SIGNS
    if not any(c.encode("cp1252").decode(e, "ignore").isalpha() for e in ("cp1250", "cp1257"))
)
_LONE_NON_ASCII = re.compile(r"(?<![^\x00-\x7f])[^\x00-\x7f](?![^\x00-\x7f])")
# A sign that is a letter in cp1250 or cp1257 ("¾" Slovak "ľ", "³" Polish "ł") between spaces or digits: such a
# letter is part of a word ("ma³y", an initial "¼. Štúr"); "at ¾ past nine" and "11¾" are cp1252's signs.
_LETTER_SIGNS = "".join(c for c in _CP1252_SIGNS if c not in _LONE_SIGNS)
_SIGN_APART = re.compile(f"(?<![^\\s\\d])[{_LETTER_SIGNS}](?![^\\s\\d])")
# Cyrillic, Greek or Hebrew read as cp1252 make whole words of accented letters; Western European words rarely hold
# three in a row.
_ACCENTED_RUN = re.compile(r"[^\W\d_a-zA-Z]{3}")
_MOJIBAKE_PASSES = 8  # Hypothesis found no text that needs more than 3; this bounds a pathological one
# What UTF-8 read as cp1252 looks like: a lead character and its continuations (ftfy's "sloppy" cp1252 maps the bytes
# cp1252 leaves undefined to C1 controls).
_CONTINUATION = "".join(bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(0x80, 0xC0))
_MOJIBAKE_SHAPE = re.compile(f"[\u00c2-\u00df][{_CONTINUATION}]|[\u00e0-\u00ef][{_CONTINUATION}]{{2}}|"
                             f"[\u00f0-\u00f4][{_CONTINUATION}]{{3}}")
# "Ã" after a letter and before a dash, a quote or a guillemet ("IRMÃ—E", "«AMANHÃ»"): Portuguese in capitals, and
# also the shape of "×", "Ñ" or "û" read as cp1252 ("ESPAÃ‘A", "flÃ»te"). Kept where the poem has an "Ã" that cannot
# be mojibake ("MÃE": "Ã" before a letter), and before a closing mark that ends a word where the poem has other
# characters that cannot be mojibake ("«", "É"); else repaired.
_A_TILDE_BEFORE_MARK = re.compile(r"(?<=[^\W\d_])Ã(?=[—–”“‘’»«™•…‹›])")
_A_TILDE_ENDING_WORD = re.compile(r"(?<=[^\W\d_])Ã(?=[”’»›™…](?![^\W\d_]))")
_A_TILDE_PLAIN = re.compile(f"Ã(?![{_CONTINUATION}])")
_KEPT = "\ufdd0"  # a noncharacter: stands for a kept "Ã" while ftfy reads the rest
# ftfy's repairs, but curly quotes kept, entities left to the parser and full-width marks as they are (a Chinese
# poem's "，！" would become ",!").
_FTFY_OPTIONS = dict(uncurl_quotes=False, unescape_html=False, fix_character_width=False, normalization="NFC")
# Line breaks other than "\n" and "\r": a vertical tab (Word's Shift+Enter, in text copied out of it; ftfy would
# delete it, gluing the last word of one line to the first of the next), Unicode's line and paragraph separators.
_LINE_BREAK = re.compile("\r?[\n\v\u2028\u2029]|\r")  # "\r\v" one break, as it was read before
# Two or more blank lines; a line of any whitespace (a no-break space, a form feed) is blank, as cleaning makes it.
_POEM_SEPARATOR = re.compile(r"\n(?:[^\S\n]*\n){2,}")
# A JSONL line or a JSON array of objects (or []); not a poem that opens "[Sí]" or "{Untitled}".
_JSON_START = re.compile(r"\s*(?:\{\s*[\"}]|\[\s*[{\]])")
# A page saved from a browser (some put "<!-- saved from url=... -->" first).
_HTML_START = re.compile(r"\s*(?:<!--.*?-->\s*)*(?:<!doctype\s+html|<html)", re.I | re.S)
_HTML_SUFFIXES = (".html", ".htm", ".xhtml")
_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
# Files from before about 2002 have no START line: their licence ends "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ...".
_GUTENBERG_OLD_START = re.compile(r"^[^\S\n]*\*END\*?[^\S\n]*THE SMALL PRINT.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
# The volunteers' credit paragraph just after the start ("Produced by Jane Doe and the Online Distributed
# Proofreading Team"; "This etext was prepared by ..."; "Transcribed from the 1914 edition by ...") and the "End of
# the Project Gutenberg EBook of ..." line just before the end: neither is a poem.
_GUTENBERG_CREDIT = re.compile(
    r"\A\s*(?:this )?(?:e-?(?:text|book) )?(?:was )?(?:produced|transcribed|prepared|provided|scanned)\b[^\n]*?\bby\b"
    r"(?:.*?\n[^\S\n]*\n|[^\n]*)",  # to the first blank line; with none, the one line
    re.I | re.S,
)
_GUTENBERG_FOOTER = re.compile(r"^[^\S\n]*End of (?:the |this )?Project Gutenberg", re.M | re.I)
_PLAIN_QUOTES = str.maketrans(dict.fromkeys("‘’ʼ′", "'") | dict.fromkeys("“”„«»″", '"'))  # copies differ in these
_LANGUAGE_TAG = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{1,8})*", re.I)  # BCP 47's shape: "es", "pt-BR", "zh-Hant"


@dataclass
class Poem:
    """One poem: its text uses ``\\n`` between lines and a blank line between stanzas."""

    title: str
    author: str
    text: str
    url: str = ""
    fetched_at: str | None = None
    lang: str | None = None  # the poem's language as a BCP 47 tag ("es"), where its page or the user said it

    @classmethod
    def from_dict(cls, d: dict, clean: bool = True) -> "Poem":
        """A poem from a corpus record; ``clean=False`` takes its text as it is (a file this project wrote)."""
        fetched_at = d.get("fetched_at")
        return cls(
            title=clean_field(d.get("title") or ""),
            author=clean_field(d.get("author") or ""),
            text=normalize_text(str(d["text"])) if clean else str(d["text"]),
            url=clean_field(d.get("url") or d.get("source") or ""),
            fetched_at=None if fetched_at is None else clean_field(fetched_at),
            lang=language_tag(d.get("lang")),
        )

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def normalize_text(text: str) -> str:
    """Clean a poem: repair mojibake, NFC, ``\\n`` line ends, no stray spaces, one blank line between stanzas.

    The result has no ``\\r``, no control character but ``\\n`` (NUL bytes are dropped), no soft hyphen or
    zero-width space, ``-`` for U+2010 and U+2011, no lone surrogate (each becomes U+FFFD), no blank line at either
    end, single spaces inside a line and none at its ends; it is NFC, and cleaning it again changes nothing.
    """
    # ftfy repairs UTF-8 read as cp1252 (the seed's "skyâ€™s"), with _FTFY_OPTIONS.
    # A repair or a tidied line can uncover another repair ("Ã\t©" -> "Ã ©" -> "à ©"): repeat until nothing changes.
    text = line_breaks(text)
    for _ in range(_MOJIBAKE_PASSES):
        cleaned = _repaired(text)
        if cleaned == text:
            break
        text = cleaned
    return text


def _repaired(text: str) -> str:
    """One pass of ftfy's repairs and our tidying over ``text``, a Portuguese "Ã" before a mark kept where the text
    shows it is UTF-8 (see ``_A_TILDE_BEFORE_MARK``): decided again at each pass, so that cleaning stops where cleaning
    again changes nothing."""
    import ftfy  # imported here: it is only needed when text is cleaned

    kept = None
    if _KEPT not in text:
        if _A_TILDE_PLAIN.search(text):
            kept = _A_TILDE_BEFORE_MARK
        elif _NOT_ASCII.search(_MOJIBAKE_SHAPE.sub("", text)):
            kept = _A_TILDE_ENDING_WORD
    held = kept.sub(_KEPT, text) if kept else text
    cleaned = _tidy(ftfy.fix_text(held, **_FTFY_OPTIONS))
    return cleaned.replace(_KEPT, "\u00c3") if kept else cleaned


def line_breaks(text: str) -> str:
    """``text`` with ``\\n`` for every line break (``\\r\\n``, ``\\r``, a vertical tab, U+2028, U+2029)."""
    return _LINE_BREAK.sub("\n", text)


def _tidy(text: str) -> str:
    """Line ends, control characters, spaces and blank lines: the cleaning ftfy leaves to us (then NFC again)."""
    text = line_breaks(text).translate(_HYPHENS)
    text = _SURROGATE.sub("\ufffd", _INVISIBLE.sub("", _CONTROL.sub("", text)))
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    return unicodedata.normalize("NFC", _BLANK_RUN.sub("\n\n", text).strip("\n"))


def language_tag(value: object) -> str | None:
    """``value`` as a language tag ("es", "pt-BR"), or None where it is none ("", "Spanish", a number)."""
    return value if isinstance(value, str) and _LANGUAGE_TAG.fullmatch(value) else None


def check_language(value: str | None) -> str | None:
    """A ``--lang`` option: None, or a language tag (else a NeuraldaError)."""
    if value is not None and language_tag(value) is None:
        raise NeuraldaError(f"--lang must be a language tag such as es or pt-BR, got {value!r}")
    return value


def clean_field(value: object) -> str:
    """A title, author or URL as one tidy line; not ftfy's repairs, so a title cut from a line stays as it was cut.
    A list (two authors) is its items, comma-separated."""
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    return " ".join(_tidy(str(value)).split())


# The encodings a language's files were written in before UTF-8, by its primary tag: the only ones tried for a file
# in that language that is not UTF-8. A guess over every encoding often misreads a few lines (EUC-JP as Thai,
# Shift_JIS as Korean, Hebrew cp1255 as Cyrillic, Turkish cp1254 as cp1252's "hatýrlýyorum"); languages not here
# (Western European ones) are read as cp1252 where they fit it, else guessed.
LEGACY_ENCODINGS = {
    **dict.fromkeys(("ru", "uk", "be", "bg", "mk"), ("cp1251", "koi8_r", "koi8_u", "iso8859_5", "cp866", "mac_cyrillic")),
    "sr": ("cp1251", "cp1250", "iso8859_5", "iso8859_2"),  # written in both alphabets
    "ja": ("cp932", "euc_jp", "iso2022_jp"),
    "zh": ("gb18030", "big5hkscs"),
    "ko": ("cp949", "iso2022_kr"),
    "el": ("cp1253", "iso8859_7"),
    **dict.fromkeys(("he", "yi"), ("cp1255", "iso8859_8")),
    **dict.fromkeys(("ar", "fa", "ur"), ("cp1256", "iso8859_6")),
    **dict.fromkeys(("tr", "az"), ("cp1254", "iso8859_9")),
    **dict.fromkeys(("pl", "cs", "sk", "hu", "hr", "sl", "bs"), ("cp1250", "iso8859_2")),
    "ro": ("cp1250", "iso8859_16", "iso8859_2"),
    **dict.fromkeys(("lt", "lv"), ("cp1257", "iso8859_13")),
    "et": ("cp1257", "iso8859_15", "iso8859_13"),
    "th": ("cp874", "tis_620"),
    "vi": ("cp1258",),
}


def decode_bytes(data: bytes, name: str, lang: str | None = None, legacy: str | None = None) -> str:
    """Decode a text file: a UTF-16 or UTF-32 BOM, else UTF-8, else UTF-8 line by line with the other lines in
    ``legacy`` where it is known (a page's ``<meta charset>`` under a header that claims UTF-8), else in the encoding
    detected (after a UTF-8 BOM too), among ``lang``'s ``LEGACY_ENCODINGS`` where it has them.

    NUL bytes: a few in a text file (a bad copy, a stray keystroke) are dropped, as :func:`normalize_text` drops
    ``\\u0000`` from JSON; a file more than 1% NUL is binary (or UTF-16 without a BOM) and an error.
    """
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace").lstrip("\ufeff")
    # A UTF-8 BOM vouches only for the file's first part: `cat bom.txt cp1252.txt` has cp1252 lines after it.
    data = data.removeprefix(codecs.BOM_UTF8)
    if data.count(b"\x00") * 100 > len(data):
        raise NeuraldaError(f"{name}: looks like a binary file, not text")
    data = data.replace(b"\x00", b"")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # A file pasted together from several sources mixes UTF-8 lines with cp1252 ones: keep each UTF-8 line as it
    # is and find the encoding of the others, which a guess over the whole file gets wrong.
    lines = data.splitlines(keepends=True)
    decoded = [_utf8_or_none(line) for line in lines]
    encoding = legacy or _legacy_encoding(b"".join(line for line, text in zip(lines, decoded) if text is None), lang)
    if encoding is None:
        raise NeuraldaError(f"{name}: looks like a binary file, not text")
    return "".join(line.decode(encoding, "replace") if text is None else text for line, text in zip(lines, decoded))


def _legacy_encoding(data: bytes, lang: str | None = None) -> str | None:
    """The likeliest of ``lang``'s ``LEGACY_ENCODINGS`` (charset_normalizer's pick); else, or where none of them
    fits, cp1252 where ``data`` reads as Western European text in it; else charset_normalizer's guess, which takes a
    few lines of Spanish, Portuguese or French for cp1250 or cp1257, and "Olé, olé" for Urdu. None: no encoding
    fits."""
    from charset_normalizer import from_bytes

    candidates = LEGACY_ENCODINGS.get((lang or "").split("-")[0].lower())
    if candidates:
        best = from_bytes(data, cp_isolation=list(candidates)).best()
        if best:
            return best.encoding
    if _reads_as_cp1252(data):
        return "cp1252"
    # Not UTF-16 or UTF-32, which it guesses for a few bytes of anything: without a BOM they have NUL bytes, and a
    # file with those was refused or had them dropped above.
    best = from_bytes(data, cp_exclusion=["utf_16_be", "utf_16_le", "utf_32_be", "utf_32_le"]).best()
    return best.encoding if best else None


def _reads_as_cp1252(data: bytes) -> bool:
    """Whether ``data`` is Western European text in cp1252: other signs than its usual marks only among ASCII (those
    that are letters in cp1250 or cp1257 only apart from letters), and
    under a quarter of its letters accented or, as in a line too short to count on that ("¿Qué?", "Él"), never three
    accented in a row."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:  # a byte cp1252 leaves undefined
        return False
    lone = {m.start() for m in _LONE_NON_ASCII.finditer(text)}
    apart = {m.start() for m in _SIGN_APART.finditer(text)}
    non_ascii = list(_NOT_ASCII.finditer(text))
    if not all(
        m[0].isalpha() or m[0] in _CP1252_MARKS or m[0] in _LONE_SIGNS and m.start() in lone or m.start() in apart
        for m in non_ascii
    ):
        return False
    accented = sum(m[0].isalpha() for m in non_ascii)
    return accented * 4 < sum(map(str.isalpha, text)) or not _ACCENTED_RUN.search(text)


def _utf8_or_none(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise NeuraldaError(f"{path}: no such file")
    if path.is_dir():
        raise NeuraldaError(f"{path}: is a directory, not a file")
    return path.read_bytes()


def read_corpus(path: str | Path, clean: bool = True, lang: str | None = None) -> list[Poem]:
    """Read a JSONL corpus (one object with a "text" field per line), or one JSON array of such objects (an export);
    bad lines are errors that name the line. ``clean=False``: the texts are already clean (a run's own data/, which
    ftfy would take 2 s to check again at a million tokens); ``lang``: the language whose legacy encodings a file
    that is not UTF-8 is read in (``decode_bytes``)."""
    if str(path) == "":  # Path("") is the current folder
        raise NeuraldaError("an empty corpus file name; give a .jsonl file")
    path = Path(path)
    text = decode_bytes(_read_bytes(path), str(path), lang)
    if text.strip() and not _JSON_START.match(text.lstrip("\ufeff")):  # poems as plain text, not yet a corpus
        raise NeuraldaError(
            f"{path} is not a JSONL corpus (one JSON object per line); make one from text files with "
            f"`neuralda corpus import {path} -o corpus.jsonl`"
        )
    poems = []
    for where, obj in _json_records(text, str(path)):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise NeuraldaError(f'{where}: expected an object with a "text" string')
        poem = Poem.from_dict(obj, clean)
        if poem.text:
            poems.append(poem)
    if not poems:
        raise NeuraldaError(f"{path}: no poems in this corpus")
    return poems


def _json_records(text: str, name: str) -> list[tuple[str, object]]:
    """Each record with where it is: ``name:line`` for a JSONL line, ``name: item N`` for an item of a JSON array."""
    if text.lstrip().startswith("["):  # no JSONL line is an array of poems: the file is one
        return [(f"{name}: item {i}", item) for i, item in enumerate(_parse_json(text, name, 1), 1)]
    records = []
    # Lines end at "\n" only: JSON strings may hold U+2028 or U+0085, which str.splitlines() would break apart.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removeprefix("\ufeff")  # a BOM starts each file joined on by `cat`, not just the first
        if line.strip():
            records.append((f"{name}:{number}", _parse_json(line, name, number)))
    return records


def _parse_json(text: str, name: str, first_line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise NeuraldaError(f"{name}:{first_line + e.lineno - 1}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # valid JSON Python refuses: a 5000-digit number, deep nesting
        raise NeuraldaError(f"{name}:{first_line}: JSON too big to read ({str(e).split(';')[0]})") from None


def corpus_jsonl(poems: Iterable[Poem]) -> str:
    """The JSONL text of ``poems``, one per line."""
    return "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in poems)


def write_corpus(path: str | Path, poems: Iterable[Poem]) -> None:
    """Atomically write ``poems`` as a JSONL corpus."""
    atomic_write(path, corpus_jsonl(poems))


def _split_text(text: str, source: str) -> list[Poem]:
    poems = []
    for chunk in _POEM_SEPARATOR.split(text):
        body = normalize_text(chunk)
        if body:
            poems.append(Poem(title=clean_field(body.split("\n", 1)[0][:80]), author="", text=body, url=source))
    return poems


def _gutenberg_start(text: str) -> re.Match | None:
    return _GUTENBERG_START.search(text) or _GUTENBERG_OLD_START.search(text)


def _strip_gutenberg(text: str, name: str) -> str:
    """The book in a Project Gutenberg file: what lies between its start and end lines, less the credits."""
    start = _gutenberg_start(text)
    if start is None:
        raise NeuraldaError(f"{name}: no '*** START OF THE PROJECT GUTENBERG' line; try --format text")
    end = _GUTENBERG_END.search(text, start.end())
    body = text[start.end() : end.start() if end else len(text)]
    footer = _GUTENBERG_FOOTER.search(body)
    return _GUTENBERG_CREDIT.sub("", body[: footer.start()] if footer else body, count=1)


def _detect_format(text: str, path: str | Path) -> str:
    if _JSON_START.match(text):
        return "jsonl"
    if Path(path).suffix.lower() in _HTML_SUFFIXES or _HTML_START.match(text):
        return "html"
    return "gutenberg" if _gutenberg_start(text) else "text"


def _html_poem(data: bytes, name: str, title_css: str | None, body_css: str | None, lang: str | None) -> list[Poem]:
    """A saved web page as one poem, read as the scraper reads a poem page: ``body_css`` (default: the page's body,
    less navigation, scripts, forms and the title) for the poem, ``title_css`` (default: its h1, else its <title>);
    ``lang``: the language to read a page that names no charset in (``decode_html``)."""
    from .scrape.extract import element_text, parse_html, poem_lang, select_poem

    soup = parse_html(data, lang=lang)
    lang = poem_lang(soup, body_css or "body")  # before the heading goes: an <h1 lang> says nothing of the poem
    heading = soup.select_one(title_css) if title_css else soup.select_one("h1") or soup.select_one("title")
    title = " ".join(element_text(heading).split()) if heading is not None else ""
    if not body_css:  # the heading is not the poem's first line, nor is the site's banner
        for part in ([heading] if heading is not None else []) + soup.select("header, [role=banner]"):
            part.decompose()
    text = select_poem(soup, body_css or "body")
    return [Poem(title=title, author="", text=text, url=name, lang=lang)] if text else []


def import_files(
    paths: Iterable[str | Path],
    fmt: str = "auto",
    author: str | None = None,
    title_css: str | None = None,
    body_css: str | None = None,
    lang: str | None = None,
) -> list[Poem]:
    """Read JSONL, plain-text (poems apart by two or more blank lines), Project Gutenberg or HTML files (one poem a
    page; ``title_css`` and ``body_css`` select its parts) as poems; ``author`` and ``lang`` (a language tag), when
    given, are every poem's."""
    if fmt not in FORMATS:
        raise NeuraldaError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    from .scrape.extract import check_selector

    for option, css in (("title", title_css), ("body", body_css)):
        if css:
            check_selector(option, css)
    author = clean_field(author) if author else None
    lang = check_language(lang)
    poems: list[Poem] = []
    for path in listed(paths, "paths"):
        name = str(path)
        data = _read_bytes(path)
        text = "" if fmt == "html" else decode_bytes(data, name, lang)  # a page is decoded by its own rules
        kind = _detect_format(text, path) if fmt == "auto" else fmt
        if kind == "html":
            found = _html_poem(data, clean_field(Path(path).name), title_css, body_css, lang)
        elif kind == "jsonl":
            found = read_corpus(path, lang=lang)
        else:
            text = line_breaks(text)  # before the Gutenberg and blank-line patterns
            body = _strip_gutenberg(text, name) if kind == "gutenberg" else text
            # A file name need not be UTF-8: Python keeps its stray bytes as lone surrogates, which cannot be written.
            found = _split_text(body, clean_field(Path(path).name))
        if not found:
            raise NeuraldaError(f"{name}: no poems found")
        for p in found:
            p.author = author or p.author
            p.lang = lang or p.lang
        poems.extend(found)
    return poems


def copy_key(text: str) -> str:
    """What copies of a poem share: its text but for case and the kind of quotes (one file imported twice,
    overlapping anthologies; lower-cased, as training reads them by default, they are one poem)."""
    return text.casefold().translate(_PLAIN_QUOTES)


def split_poems(poems: list[Poem], val_fraction: float, seed: int) -> tuple[list[Poem], list[Poem]]:
    """Hold out whole poems (never overlapping windows), the same ones for the same seed; the copies of a poem
    (``copy_key``) are held out together or not at all, so validation holds only poems training never saw."""
    if not 0.0 <= val_fraction < 1.0:
        raise NeuraldaError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(poems) * val_fraction)
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    order = list(range(len(poems)))
    random.Random(seed).shuffle(order)
    copies: dict[str, list[int]] = {}  # in the shuffled order of each text's first copy
    for i in order:
        copies.setdefault(copy_key(poems[i].text), []).append(i)
    if n_val >= len(poems) and len(copies) > 1:
        raise NeuraldaError(
            f"--val-fraction {val_fraction} would hold out all {len(poems)} poems; use at most "
            f"{math.floor((len(poems) - 1) / len(poems) * 1000) / 1000:g}, or 0 for no validation split"
        )
    if n_val >= len(poems) or (n_val and len(copies) == 1):
        different = "" if len(copies) == len(poems) else f" ({len(copies)} different)"
        raise NeuraldaError(
            f"the corpus has {len(poems)} poem(s){different}: too few for a validation split; use --val-fraction 0"
        )
    # Each poem with all its copies, in that order, where they still fit: without copies, the shuffle's first n_val,
    # the split of the runs made before copies were kept together.
    held: set[int] = set()
    for group in copies.values():
        if len(held) + len(group) <= n_val:
            held.update(group)
    if n_val and not held:  # each poem has more copies than validation wants: the one with fewest, all of them
        held.update(min(copies.values(), key=len))
    train = [p for i, p in enumerate(poems) if i not in held]
    val = [p for i, p in enumerate(poems) if i in held]
    return train, val


def corpus_stats(poems: list[Poem], keep_case: bool = False, top: int = 20) -> dict:
    """Counts a person wants before training: poems, lines, words, tokens, vocabulary, common and rare words."""
    from collections import Counter

    from .tokenizer import is_word, token_counts

    counts = token_counts((p.text for p in poems), keep_case)
    words = Counter({t: c for t, c in counts.items() if is_word(t)})
    return {
        "poems": len(poems),
        "lines": sum(len([ln for ln in p.text.split("\n") if ln]) for p in poems),
        "words": sum(words.values()),
        "tokens": counts.total(),
        "vocabulary": len(counts),
        "distinct_words": len(words),
        "words_once": sum(1 for c in words.values() if c == 1),
        "most_common": words.most_common(top),
    }

