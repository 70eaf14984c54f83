"""Poem records, JSONL corpora, importers, text cleaning and poem-level splits."""

from __future__ import annotations

import codecs
import json
import random
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from .errors import NeuraldaError
from .files import atomic_write

FORMATS = ("auto", "jsonl", "text", "gutenberg")

_BLANK_RUN = re.compile(r"\n{3,}")
# C0 controls but tab, line feed, form feed and carriage return; DEL; the C1 controls ftfy could not read as cp1252.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # half a UTF-16 pair, from a JSON "\ud800" escape: U+FFFD, as ftfy does
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
_CP1252_MARKS = set("\xa0¡¿«»“”‘’–—…°ºª·•©€")  # not letters, but at home in Western European text
_MOJIBAKE_PASSES = 8  # Hypothesis found no text that needs more than 3; this bounds a pathological one
_POEM_SEPARATOR = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")  # two or more blank lines
_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


@dataclass
class Poem:
    """One poem: its text uses ``\\n`` between lines and a blank line between stanzas."""

    title: str
    author: str
    text: str
    url: str = ""
    fetched_at: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Poem":
        fetched_at = d.get("fetched_at")
        return cls(
            title=_clean_field(d.get("title") or ""),
            author=_clean_field(d.get("author") or ""),
            text=normalize_text(str(d["text"])),
            url=_clean_field(d.get("url") or d.get("source") or ""),
            fetched_at=None if fetched_at is None else _clean_field(fetched_at),
        )

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def normalize_text(text: str) -> str:
    """Clean a poem: repair mojibake, NFC, ``\\n`` line ends, no stray spaces, one blank line between stanzas.

    The result has no ``\\r``, no control character but ``\\n`` (NUL bytes are dropped), no lone surrogate (each
    becomes U+FFFD), no blank line at either end, single spaces inside a line and none at its ends; it is NFC, and
    cleaning it again changes nothing.
    """
    import ftfy  # imported here: it is only needed when text is cleaned

    # ftfy repairs UTF-8 read as cp1252 (the seed's "skyâ€™s"); keep curly quotes and leave entities to the parser.
    # A repair or a tidied line can uncover another repair ("Ã\t©" -> "Ã ©" -> "à ©"): repeat until nothing changes.
    for _ in range(_MOJIBAKE_PASSES):
        cleaned = _tidy(ftfy.fix_text(text, uncurl_quotes=False, unescape_html=False, normalization="NFC"))
        if cleaned == text:
            break
        text = cleaned
    return text


def _tidy(text: str) -> str:
    """Line ends, control characters, spaces and blank lines: the cleaning ftfy leaves to us (then NFC again)."""
    text = _SURROGATE.sub("\ufffd", _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")))
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    return unicodedata.normalize("NFC", _BLANK_RUN.sub("\n\n", text).strip("\n"))


def _clean_field(value: object) -> str:
    """A title, author or URL as one tidy line; not ftfy's repairs, so a title cut from a line stays as it was cut."""
    return " ".join(_tidy(str(value)).split())


def decode_bytes(data: bytes, name: str) -> str:
    """Decode a text file: a BOM, then UTF-8, then UTF-8 line by line with the other lines' encoding detected.

    NUL bytes: a few in a text file (a bad copy, a stray keystroke) are dropped, as :func:`normalize_text` drops
    ``\\u0000`` from JSON; a file more than 1% NUL is binary (or UTF-16 without a BOM) and an error.
    """
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace").lstrip("\ufeff")
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
    encoding = _legacy_encoding(b"".join(line for line, text in zip(lines, decoded) if text is None))
    if encoding is None:
        raise NeuraldaError(f"{name}: looks like a binary file, not text")
    return "".join(line.decode(encoding, "replace") if text is None else text for line, text in zip(lines, decoded))


def _legacy_encoding(data: bytes) -> str | None:
    """cp1252 where ``data`` reads as Western European text in it (under a quarter of its letters accented, no stray
    symbols); else charset_normalizer's guess, which takes a few lines of Spanish, Portuguese or French for
    cp1250 or cp1257. None: no encoding fits."""
    from charset_normalizer import from_bytes

    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = ""
    non_ascii = _NOT_ASCII.findall(text)
    accented = sum(map(str.isalpha, non_ascii))
    if accented * 4 < sum(map(str.isalpha, text)) and all(c.isalpha() or c in _CP1252_MARKS for c in non_ascii):
        return "cp1252"
    best = from_bytes(data).best()
    return best.encoding if best else None


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


def read_corpus(path: str | Path) -> list[Poem]:
    """Read a JSONL corpus (one object with a "text" field per line); bad lines are errors that name the line."""
    path = Path(path)
    text = decode_bytes(_read_bytes(path), str(path))
    poems = []
    # Lines end at "\n" only: JSON strings may hold U+2028 or U+0085, which str.splitlines() would break apart.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise NeuraldaError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise NeuraldaError(f"{path}:{number}: expected an object with a \"text\" string")
        poem = Poem.from_dict(obj)
        if poem.text:
            poems.append(poem)
    if not poems:
        raise NeuraldaError(f"{path}: no poems in this corpus")
    return poems


def corpus_jsonl(poems: Iterable[Poem]) -> str:
    """The JSONL text of ``poems``, one per line."""
    return "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in poems)


def write_corpus(path: str | Path, poems: Iterable[Poem]) -> None:
    """Atomically write ``poems`` as a JSONL corpus."""
    atomic_write(path, corpus_jsonl(poems))


def _split_text(text: str, author: str, source: str) -> list[Poem]:
    chunks = _POEM_SEPARATOR.split(text.replace("\r\n", "\n").replace("\r", "\n"))
    poems = []
    for chunk in chunks:
        body = normalize_text(chunk)
        if body:
            poems.append(Poem(title=_clean_field(body.split("\n", 1)[0][:80]), author=author, text=body, url=source))
    return poems


def _strip_gutenberg(text: str, name: str) -> str:
    start = _GUTENBERG_START.search(text)
    if start is None:
        raise NeuraldaError(f"{name}: no '*** START OF THE PROJECT GUTENBERG' line; try --format text")
    end = _GUTENBERG_END.search(text, start.end())
    return text[start.end() : end.start() if end else len(text)]


def _detect_format(text: str) -> str:
    if text.lstrip().startswith("{"):
        return "jsonl"
    return "gutenberg" if _GUTENBERG_START.search(text) else "text"


def import_files(paths: Iterable[str | Path], fmt: str = "auto", author: str | None = None) -> list[Poem]:
    """Read JSONL, plain-text (poems apart by two or more blank lines) or Project Gutenberg files as poems."""
    if fmt not in FORMATS:
        raise NeuraldaError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    author = _clean_field(author) if author else None
    poems: list[Poem] = []
    for path in paths:
        name = str(path)
        text = decode_bytes(_read_bytes(path), name)
        kind = _detect_format(text) if fmt == "auto" else fmt
        if kind == "jsonl":
            found = read_corpus(path)
            if author:
                for p in found:
                    p.author = author
        else:
            body = _strip_gutenberg(text, name) if kind == "gutenberg" else text
            found = _split_text(body, author or "", Path(path).name)
        if not found:
            raise NeuraldaError(f"{name}: no poems found")
        poems.extend(found)
    return poems


def split_poems(poems: list[Poem], val_fraction: float, seed: int) -> tuple[list[Poem], list[Poem]]:
    """Hold out whole poems (never overlapping windows), the same ones for the same seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise NeuraldaError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(poems) * val_fraction)
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= len(poems):
        raise NeuraldaError(
            f"the corpus has {len(poems)} poem(s): too few for a validation split; use --val-fraction 0"
        )
    order = list(range(len(poems)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    train = [p for i, p in enumerate(poems) if i not in held]
    val = [p for i, p in enumerate(poems) if i in held]
    return train, val


def corpus_stats(poems: list[Poem], keep_case: bool = False, top: int = 20) -> dict:
    """Counts a person wants before training: poems, lines, words, tokens, vocabulary, common and rare words."""
    from collections import Counter

    from .tokenizer import is_word, tokenize

    tokens = [t for p in poems for t in tokenize(p.text, keep_case=keep_case)]
    counts = Counter(tokens)
    words = Counter({t: c for t, c in counts.items() if is_word(t)})
    return {
        "poems": len(poems),
        "lines": sum(len([ln for ln in p.text.split("\n") if ln]) for p in poems),
        "words": sum(words.values()),
        "tokens": len(tokens),
        "vocabulary": len(counts),
        "distinct_words": len(words),
        "words_once": sum(1 for c in words.values() if c == 1),
        "most_common": words.most_common(top),
    }

