"""Word-level tokens after got-book-6 and the seed: words, punctuation, line, stanza and poem breaks.

``tokenize`` turns a poem into tokens, ``detokenize`` writes tokens back as a poem, and ``Vocab`` maps tokens
to integers. Each punctuation mark is its own token, written back with the spacing people use (no space before a
comma, none after an opening bracket, dashes joined); where the poet spaced a mark otherwise, the token carries the
space (" --", " -- ", " ,"), so ``detokenize(tokenize(text, keep_case=True)) == text`` for any normalised text
(words are lower-cased by default).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import NeuraldaError, listed
from .files import parse_json, write_json

LINE = "<nl>"
STANZA = "<stanza>"
POEM_END = "<poembreak>"  # the seed's token
UNK = "<unk>"
SPECIALS = (UNK, LINE, STANZA, POEM_END)
BREAKS = frozenset((LINE, STANZA, POEM_END))


def _marks() -> str:
    """Every combining mark, as a regex class body (Python's ``re`` has no Unicode category classes). They sit
    in planes 0 and 1 and the variation selectors supplement (checked against Python's Unicode database)."""
    codes = (c for r in (range(0x20000), range(0xE0100, 0xE01F0)) for c in r if unicodedata.category(chr(c))[0] == "M")
    spans: list[list[int]] = []
    for c in codes:
        if spans and spans[-1][1] == c - 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in spans)


# A word: letters and digits, with apostrophes or hyphens only inside (don't, sky’s, earth-star, in-laws); the
# combining marks after a letter are part of it (Bengali and Hindi vowel signs, the dot of a lower-cased "İ"), and
# so are the zero-width (non-)joiners that Persian and Indic scripts write inside words.
# Chinese characters and Japanese kana are each a token of their own: those scripts write no spaces between words,
# so a run of them would be a whole line (a model could only replay its training lines), and no space is written
# between them or beside them.
_IDEOGRAPHS = "\u3040-\u30fa\u30fc-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_MARKS = _marks()
_ALNUM = rf"[^\W_{_IDEOGRAPHS}](?:[^\W_{_IDEOGRAPHS}]|[{_MARKS}\u200c\u200d])*"
_WORD = rf"{_ALNUM}(?:['’\-]{_ALNUM})*"
_IDEOGRAPH = rf"[{_IDEOGRAPHS}][{_MARKS}]*"
_DASH = r"-+|[—–―]"
_TOKEN = re.compile(rf"(?P<word>{_WORD})|(?P<ideograph>{_IDEOGRAPH})|(?P<dash>{_DASH})|(?P<mark>\S)")
_WORD_RE = re.compile(_WORD)
_IS_WORD = re.compile(rf"(?:{_WORD}| ?{_IDEOGRAPH} ?)\Z")  # a character keeps a space the poet put beside it
_IS_IDEOGRAPH = re.compile(rf"{_IDEOGRAPH}\Z")
_IS_DASH = re.compile(rf"(?:{_DASH})\Z")

_CLOSE = frozenset(".,;:!?)]}%…”»›，。、；：！？）」』】〉》")  # no space before
_OPEN = frozenset("([{“‘¿¡«‹（「『【〈《")  # no space after
_APOSTROPHES = frozenset("'’")
_TOGGLES = frozenset('"_')  # the same mark opens and closes
# Elisions written apart from their word in old texts: 't is, I 've, 'tis, o 'er.
_ELIDED_ENDS = frozenset("th thro tho o e".split())
_ELISIONS = frozenset("t s d ll ve re m em er tis twas twere twill twould tween twixt gainst neath mid midst mong gan fore bout".split())


def is_word(token: str) -> bool:
    """True for a word token (not punctuation, not a break)."""
    return bool(_IS_WORD.match(token))


def _line_tokens(line: str, quotes: dict[str, bool]) -> list[str]:
    """One line's tokens; where the poet spaced two tokens otherwise than people usually do (``_spacing``), a space
    on the non-word side of the gap says so: " --" (a space before), "-- " (after), " -- " (both), " ." (a space
    before a full stop). Words never carry one (a Chinese or Japanese character can: "古池や 蛙" has " 蛙"), so
    the round trip is lossless for any text."""
    matches = list(_TOKEN.finditer(line))
    tokens = [m.group() for m in matches]
    usual = _spacing(tokens, quotes)
    for i in range(1, len(tokens)):
        if (matches[i].start() > matches[i - 1].end()) != usual[i]:
            if is_word(tokens[i]) and not _IS_IDEOGRAPH.match(tokens[i]):
                tokens[i - 1] += " "  # a mark or a character before it: two words always have a space between
            else:
                tokens[i] = " " + tokens[i]
    return tokens


def tokenize(text: str, keep_case: bool = False, end: bool = True) -> list[str]:
    """Tokens of one (normalised) poem, ending with ``<poembreak>`` when ``end`` is set."""
    if not keep_case:
        text = text.lower()
    tokens: list[str] = []
    quotes = _no_open_quotes()
    for s, stanza in enumerate(text.split("\n\n")):
        if s:
            tokens.append(STANZA)
        for i, line in enumerate(stanza.split("\n")):
            if i:
                tokens.append(LINE)
            tokens.extend(_line_tokens(line, quotes))
    if end:
        tokens.append(POEM_END)
    return tokens


def token_counts(texts: Iterable[str], keep_case: bool = False) -> Counter[str]:
    """How often each token occurs in the poems ``texts`` (``total()``: their tokens), counted a poem at a time: a
    list of every token took 90 bytes a token (450 MB at 5 million)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenize(text, keep_case=keep_case))
    return counts


def _closers_from(tokens: Sequence[str]) -> list[bool]:
    """For each position ``j`` of a line (and its end), whether a ' at ``j`` or later ends a quotation (it is
    followed by no word); one pass from the end, not a scan per apostrophe (a 50,000-word line of "an' a' the"
    took 16 s)."""
    found = [False] * (len(tokens) + 1)
    for j in range(len(tokens) - 1, -1, -1):
        found[j] = found[j + 1] or (tokens[j] == "'" and (j + 1 == len(tokens) or not is_word(tokens[j + 1])))
    return found


def _possessive_end(word: str) -> bool:
    """A word that an apostrophe after it most likely belongs to: lovers', th', thro'."""
    return word.endswith("s") or word in _ELIDED_ENDS


def _no_open_quotes() -> dict[str, bool]:
    return {'"': False, "'": False, "_": False}


def _spacing(tokens: Sequence[str], quotes: dict[str, bool]) -> list[bool]:
    """Whether people put a space before each token of a line (never before the first): none before closing marks,
    none after opening ones, quotes by where they stand, dashes joined. ``quotes`` tracks open quotes across lines."""
    spaces = []
    closers: list[bool] | None = None  # made when an apostrophe needs it
    glue_next = True  # no space before the first token of a line
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        glue, glue_next = glue_next, False
        if tok in _CLOSE:
            glue = True
        elif tok in _OPEN:
            glue_next = True
        elif tok in _TOGGLES:
            # A mark at the start of a line opens, one at the end closes; otherwise they alternate.
            closing = i > 0 and (not nxt or nxt in _CLOSE or quotes[tok])
            if closing:
                glue = True
            else:
                glue_next = True
            quotes[tok] = not closing
        elif tok in _APOSTROPHES:
            if nxt in _ELISIONS:
                glue_next = True  # 't is, I 've
            elif i == 0:
                glue_next = True  # a quote opening the line
                quotes["'"] = True
            elif quotes["'"] or tok == "’":
                glue = True  # a closing quote, or a possessive: lovers’
                quotes["'"] = False
            elif (is_word(nxt) or nxt in _APOSTROPHES) and (
                (closers := closers or _closers_from(tokens))[i + 1] or not _possessive_end(tokens[i - 1])
            ):
                glue_next = True  # an opening quote
                quotes["'"] = True
            else:
                glue = True  # a possessive: lovers' eyes, th' imagination
        elif _IS_DASH.match(tok):
            glue = glue_next = True  # a dash joins both sides unless the poet spaced it
        if _IS_IDEOGRAPH.match(tok) or (i and _IS_IDEOGRAPH.match(tokens[i - 1])):
            glue = True
        spaces.append(not glue)
    return spaces


def _join_line(tokens: Sequence[str], quotes: dict[str, bool]) -> str:
    """Write one line's tokens: spaced as people do (``_spacing``) except where a token says otherwise."""
    marks = [t.strip(" ") or t for t in tokens]
    usual = _spacing(marks, quotes)
    out: list[str] = []
    glued = False  # the mark before was written against its own predecessor
    for i, mark in enumerate(marks):
        spaced = i > 0 and usual[i] != (tokens[i].startswith(" ") or tokens[i - 1].endswith(" "))
        # A model may write a mark where the corpus never had it: "way", " '", "after" glued would read back as the
        # one word "way'after". tokenize never gives a word glued so (it reads one word there): the space is lossless.
        if i > 1 and not spaced and glued and _WORD_RE.fullmatch(marks[i - 2] + marks[i - 1] + mark):
            spaced = True
        out.append(" " * spaced + mark)
        glued = i > 0 and not spaced
    return "".join(out)


def detokenize(tokens: Iterable[str]) -> str:
    """Write tokens back as a poem: lines, stanzas, and punctuation attached as people write it."""
    lines: list[str] = []
    current: list[str] = []
    quotes = _no_open_quotes()
    for tok in listed(tokens, "tokens"):
        if tok in BREAKS:
            lines.append(_join_line(current, quotes))
            current = []
            if tok == STANZA:
                lines.append("")
            elif tok == POEM_END:
                break
        elif tok != UNK:
            current.append(tok)
    else:
        lines.append(_join_line(current, quotes))
    return "\n".join(lines).strip("\n")


@dataclass
class Vocab:
    """Tokens to integers and back; built from the training split only."""

    itos: list[str]
    keep_case: bool = False
    min_count: int = 1

    def __post_init__(self) -> None:
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.unk = self.stoi[UNK]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    @functools.cached_property
    def word_mask(self) -> list[bool]:
        """Whether each token id is a word (not a mark or a break)."""
        return [is_word(t) for t in self.itos]

    @functools.cached_property
    def same_word(self) -> list[int]:
        """For each token id, the first id spelling the same word: a Chinese or Japanese character with a space
        beside it (" 蛙") is the word "蛙" to the copy guard, as to the copying measures."""
        first: dict[str, int] = {}
        return [first.setdefault(t.strip(" "), i) if is_word(t) else i for i, t in enumerate(self.itos)]

    @functools.cached_property
    def spellings(self) -> dict[int, list[int]]:
        """Every id of each word ``same_word`` gives several (most vocabularies: none)."""
        ids: dict[int, list[int]] = {}
        for i, word in enumerate(self.same_word):
            if word != i:
                ids.setdefault(word, [word]).append(i)
        return ids

    @classmethod
    def build(cls, token_lists: Iterable[Iterable[str]], min_count: int = 1, keep_case: bool = False) -> "Vocab":
        """Specials first, then tokens seen at least ``min_count`` times, most frequent first."""
        return cls.from_counts(Counter(t for tokens in token_lists for t in tokens), min_count, keep_case)

    @classmethod
    def from_counts(cls, counts: Counter[str], min_count: int = 1, keep_case: bool = False) -> "Vocab":
        """``build``'s vocabulary from the tokens' counts (``token_counts``)."""
        if min_count < 1:
            raise NeuraldaError(f"--min-count must be at least 1, got {min_count}")
        kept = (t for t, c in counts.items() if c >= min_count and t not in SPECIALS)
        itos = list(SPECIALS) + sorted(kept, key=lambda t: (-counts[t], t))
        return cls(itos, keep_case=keep_case, min_count=min_count)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """The ids of ``tokens`` (``tokenize``'s), ``<unk>``'s for a word not in the vocabulary."""
        return [self.stoi.get(t, self.unk) for t in listed(tokens, "tokens")]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def encode_poems(self, texts: Iterable[str]) -> list[int]:
        """One id stream for many poems, each ending with ``<poembreak>``."""
        return [i for text in texts for i in self.encode(tokenize(text, keep_case=self.keep_case))]

    def to_dict(self) -> dict:
        """What vocab.json holds."""
        return {"keep_case": self.keep_case, "min_count": self.min_count, "tokens": self.itos}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        try:
            data = parse_json(Path(path).read_text(encoding="utf-8"))
            min_count = data["min_count"]
            if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
                raise ValueError(f"min_count must be a whole number above 0, not {min_count!r}")
            vocab = cls(list(data["tokens"]), keep_case=bool(data["keep_case"]), min_count=min_count)
        except FileNotFoundError:
            raise NeuraldaError(f"{path}: no vocabulary here (is this a run directory?)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise NeuraldaError(f"{path}: not a neuralda vocabulary ({e})") from None
        if any(not isinstance(t, str) for t in vocab.itos) or len(vocab.stoi) != len(vocab.itos):
            raise NeuraldaError(f"{path}: not a neuralda vocabulary (tokens must be distinct strings)")
        missing = [s for s in SPECIALS if s not in vocab.stoi]
        if missing:
            raise NeuraldaError(f"{path}: not a neuralda vocabulary (no {', '.join(missing)} token)")
        return vocab
