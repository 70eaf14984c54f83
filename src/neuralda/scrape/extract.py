"""HTML to poem: bytes decoded the way browsers do, then laid out as a browser shows them: ``<br>`` and a block's
edges (``<div>``, ``<li>``) end a line, a paragraph's margins (``<p>``, ``<blockquote>``, ``<hr>``) make a blank line
between stanzas; hidden text, footnote marks and line numbers are not the poem."""

from __future__ import annotations

import codecs
import html
import re
import warnings
from urllib.parse import urljoin

import ftfy.bad_codecs  # noqa: F401  registers "sloppy-windows-1252", the windows-1252 that browsers decode
import soupsieve
import webencodings
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, NavigableString, Tag, XMLParsedAsHTMLWarning

from ..corpus import decode_bytes, language_tag, line_breaks, normalize_text
from ..errors import NeuraldaError

# Elements a browser puts on lines of their own; those with margins (PARAGRAPH_TAGS) also a blank line around.
BLOCK_TAGS = frozenset(
    "address article blockquote caption center dd details dialog div dl dt fieldset figcaption figure h1 h2 h3 h4 h5 h6"
    " header hgroup hr li main ol p pre section summary table tbody tfoot thead tr ul".split()
)
PARAGRAPH_TAGS = frozenset("blockquote dl fieldset figure h1 h2 h3 h4 h5 h6 hr ol p pre table ul".split())
CELL_TAGS = frozenset(("td", "th"))  # side by side on their row
# Classes (whole, not "text-lg" or "line-through") that say what an element of a poem is, whatever its tag: TEI's
# "lg" and "l", a site's "stanza", a "line" made a block by its stylesheet (which a scraper never reads).
STANZA_CLASSES = frozenset(("stanza", "strophe", "lg", "poem-stanza"))
LINE_CLASSES = frozenset(("line", "l", "verse-line", "poem-line"))
# Classes of what is beside a poem's words, not in them: line numbers, footnote marks (MediaWiki's
# <sup class="reference">, Pandoc's <a class="footnote-ref">).
NOT_TEXT_CLASSES = frozenset(
    "linenum lineno linenumber line-number line-num reference footnote footnote-ref noteref fnref".split()
)
# What can hold no line of text: a paragraph of only these is an empty line, where it has a <br> or a no-break space.
_PICTURES = ("img", "picture", "svg", "video", "audio", "iframe", "object", "embed", "canvas", "input")
_KEEPS_NEWLINES = re.compile(r"white-space\s*:\s*(?:pre|pre-wrap|pre-line|break-spaces)\b|^whitespace-pre", re.I)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
# "<br></br>" (XML writers) is one line break; a lone "</br>" (hand-written pages) one too, as browsers read it.
_END_TAG_BR = re.compile(r"(?:<br\b[^>]*>\s*)?</br\s*>", re.I)
# Never poem text, wherever they sit: code, forms, embedded players, navigation and side boxes.
DROPPED_TAGS = frozenset(
    "script style noscript template form button input select option textarea label iframe object embed canvas svg"
    " audio video nav aside footer head title meta link".split()
)
# Class or id words that mark advertising boxes (Google's <ins class="adsbygoogle">, "ad-slot", "sponsored" ...).
AD_WORDS = frozenset(
    "ad ads adsbygoogle advert adverts advertisement advertising sponsor sponsored promo"
    " publicidad publicidade pubblicita publicite publicité anuncio anuncios patrocinado patrocinio werbung reklame".split()
)

# WHATWG Encoding: browsers decode these labels as the superset their pages are really written in. Latin-1 or ASCII
# pages are windows-1252 (curly quotes live in 0x80-0x9F), whose unassigned bytes are C1 controls, not U+FFFD: in a
# UTF-8 page so labelled, "Á" is C3 81 and must survive. GB2312 pages are GBK, Shift_JIS ones use Microsoft's
# additions (①, 髙), EUC-KR ones windows-949's 8,822 extra Hangul syllables, Big5 ones Hong Kong's HKSCS: decoded
# strictly, each such character was a U+FFFD in the poem.
_BROWSER_CODECS = {
    **dict.fromkeys(("latin-1", "iso8859-1", "ascii", "cp1252"), "sloppy-windows-1252"),
    **dict.fromkeys(("gb2312", "gbk"), "gb18030"),
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "big5": "big5hkscs",
}
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([^\s;"']+)""", re.I)
_META_CHARSET = re.compile(rb"""<meta\b[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_:.\-]+)""", re.I)
_HTML_LANG = re.compile(rb"""<html\b[^>]*?\slang\s*=\s*["']?\s*([A-Za-z]{2,3})\b""", re.I)
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")
_WORD_SPLIT = re.compile(r"[-_\s]+")


# --- bytes to text -----------------------------------------------------------------------------------------------


def _codec(label: str, from_meta: bool = False) -> str | None:
    """Python's codec for a charset label, as browsers read it (WHATWG's labels: "windows-874", "x-cp1250" and
    "iso-8859-8-i" are none of Python's, and "latin5" is windows-1254 there); None for a label nobody knows, or for
    one that browsers decode as a lone U+FFFD ("replacement": ISO-2022-KR, HZ)."""
    whatwg = webencodings.lookup(label)
    try:
        name = codecs.lookup(whatwg.codec_info.name if whatwg else label.strip().lower()).name
        # Python also knows codecs no page is written in (base64, rot13) or that cannot replace a bad byte (idna).
        b"\x80".decode(name, errors="replace")
    except (LookupError, UnicodeError, ValueError):  # ValueError: a NUL in the label
        return None
    # A <meta> that claims UTF-16 was necessarily read as ASCII-compatible bytes, so it is UTF-8.
    if from_meta and name.startswith("utf-16"):
        return "utf-8"
    return _BROWSER_CODECS.get(name, name)


def _detect(data: bytes, lang: str | None, legacy: str | None = None) -> str:
    """Decode a page that names no charset, or claims UTF-8 and is not: as a text file is read (UTF-8 line by line,
    the other lines in ``legacy`` where known, else in the legacy encoding of ``lang``, else of the page's
    ``<html lang>``, that reads them: ``corpus.decode_bytes``)."""
    if lang is None:
        found = _HTML_LANG.search(data[:4096])
        lang = found.group(1).decode("ascii") if found else None
    try:
        return decode_bytes(data, "the page", lang, legacy)
    except NeuraldaError:  # "binary": NUL bytes everywhere; the text there is still worth a look
        return data.decode("utf-8", errors="replace")


def decode_html(data: bytes, content_type: str = "", lang: str | None = None) -> str:
    """Page bytes as text: a BOM, then the HTTP header's charset, then ``<meta charset>``, then detection among the
    encodings of ``lang`` or the page's language (the WHATWG order browsers follow: a BOM outranks the header)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(name, errors="replace")
    found = _HEADER_CHARSET.search(content_type or "")
    header, meta = _codec(found.group(1)) if found else None, None
    if header in (None, "utf-8"):
        found = _META_CHARSET.search(data[:4096])
        meta = _codec(found.group(1).decode("ascii"), from_meta=True) if found else None
    codec = header or meta
    if codec in (None, "utf-8"):
        # Detection reads UTF-8 as such, and a page mislabelled UTF-8 as it is: an old page under a server's default
        # UTF-8 header has its other lines in what its <meta> names.
        return _detect(data, lang, None if meta == "utf-8" else meta)
    return data.decode(codec, errors="replace").lstrip("\ufeff")


def parse_html(data: bytes, content_type: str = "", lang: str | None = None) -> BeautifulSoup:
    """The parsed page (lxml), decoded by :func:`decode_html` so lxml never guesses the encoding itself. A plain-text
    page is one ``<pre>`` in its ``<body>``, so that its newlines stay line breaks (as a browser shows it)."""
    text = decode_html(data, content_type, lang)
    if content_type.split(";", 1)[0].strip().lower() == "text/plain":
        text = f"<html><body><pre>{html.escape(text, quote=False)}</pre></body></html>"
    else:  # a browser reads "</br>" as "<br>" (hand-written pages have it); lxml drops it, gluing two lines
        text = _END_TAG_BR.sub("<br>", text)
    with warnings.catch_warnings():
        # A page whose whole text is "poem.txt" or a URL is still a page, and a feed's entries and links are read as
        # a page's (lxml's HTML parser keeps them): bs4's hints about file names and XML are not for the user.
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        return BeautifulSoup(text, "lxml")


# --- selectors ---------------------------------------------------------------------------------------------------


def check_selector(option: str, css: str) -> None:
    """Raise NeuraldaError naming the ``--option`` when ``css`` is not a valid CSS selector."""
    try:
        soupsieve.compile(css)
    except soupsieve.SelectorSyntaxError as e:
        detail = str(e).splitlines()[0]
        raise NeuraldaError(f"invalid CSS selector for --{option}: {css!r} ({detail})") from None


def select_links(soup: BeautifulSoup, css: str, page_url: str) -> list[str]:
    """Absolute targets of the links ``css`` selects: a match with an href (``<a>``, ``<link rel=next>``), else the
    ``<a href>`` inside it."""
    base = page_url
    base_tag = soup.find("base", href=True)
    if base_tag is not None:
        base = _join(page_url, str(base_tag["href"])) or page_url
    links = []
    for element in soup.select(css):
        anchors = [element] if element.has_attr("href") else element.select("a[href]")
        for anchor in anchors:
            url = _join(base, str(anchor["href"]))
            if url is not None:
                links.append(url)
    return links


def _join(base: str, href: str) -> str | None:
    """``href`` made absolute against ``base``; None for one no browser could follow ("http://[oops")."""
    try:
        return urljoin(base, href)
    except ValueError:
        return None


# --- elements to text --------------------------------------------------------------------------------------------


def _is_ad(tag: Tag) -> bool:
    words = " ".join(tag.get_attribute_list("class") + [tag.get("id") or ""])
    return any(word in AD_WORDS for word in _WORD_SPLIT.split(words.lower()) if word)


def _is_hidden(tag: Tag) -> bool:
    """Whether a browser shows none of ``tag``: ``hidden``, ``display: none``, a dialog that is not open."""
    style = tag.get("style") or ""
    closed_dialog = tag.name == "dialog" and not tag.has_attr("open")
    return tag.has_attr("hidden") or bool(_HIDDEN_STYLE.search(style)) or closed_dialog


def _is_mark(tag: Tag, classes: set[str]) -> bool:
    """A line number or a footnote mark: by its class, or a superscript that only links within the page ("[1]")."""
    if not NOT_TEXT_CLASSES.isdisjoint(classes) or tag.get("role") == "doc-noteref":
        return True
    links = tag.select("a[href]") if tag.name == "sup" else []
    return bool(links) and all(str(a["href"]).startswith("#") for a in links) and len(tag.get_text().strip()) <= 5


def _keeps_newlines(tag: Tag) -> bool:
    """``<pre>``, or an element styled to keep its newlines (``white-space: pre-wrap``, Tailwind's class)."""
    return tag.name == "pre" or any(
        _KEEPS_NEWLINES.search(value) for value in [tag.get("style") or "", *tag.get_attribute_list("class")] if value
    )


class _Lines:
    """Text laid out as a browser shows it: words, line ends (``<br>``, a block's edges) and blank lines (a
    paragraph's margins), collapsed as a browser collapses them (an empty ``<div>`` makes no line, a ``<br>`` at the
    end of a line's block no second one)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.open = False  # the current line has something to show
        self.blank = 0  # empty lines since the last line with something
        self.started = False

    def text(self, text: str) -> None:
        self.parts.append(text)
        if text.strip(" \t\n\r\f"):  # a no-break space shows: "<p>&nbsp;</p>" is an empty line
            self.open = self.started = True

    def br(self) -> None:
        self.parts.append("\n")
        self.blank = 0 if self.open else self.blank + 1
        self.open = False

    def line(self) -> None:
        if self.open:
            self.br()

    def gap(self) -> None:
        self.line()
        if self.started and not self.blank:
            self.br()


def _is_empty_line(p: Tag) -> bool:
    """Whether paragraph ``p`` shows as an empty line: no text but a ``<br>`` or a no-break space, and no picture."""
    text = p.get_text()
    return not text.strip() and ("\xa0" in text or p.find("br") is not None) and p.find(_PICTURES) is None


def _layout(roots: list[Tag]) -> str:
    """The text of ``roots`` (side by side, as blocks) laid out by ``_Lines``; not yet normalised."""
    lines = _Lines()
    # An explicit stack, not recursion: a page nested a thousand levels deep must not crash the run. Items are
    # (node, in a <pre>, <p> is a line) or a line end to make once a block's children are done.
    stack: list = []
    for root in reversed(roots):
        # --body may select a <pre> itself, or an element inside one: its newlines are line breaks too.
        in_pre = any(_keeps_newlines(tag) for tag in root.parents if isinstance(tag, Tag))
        # A paragraph per line, empty ones between stanzas ("<p>&nbsp;</p>"): a paragraph is a line there.
        paragraphs = root.find_all("p")
        empty = {id(p) for p in paragraphs if _is_empty_line(p)}  # by identity: equal markup is an equal Tag
        p_lines = bool(empty) and not any(p.find("br") for p in paragraphs if id(p) not in empty)
        stack.append((root, in_pre, p_lines, True))
    while stack:
        item = stack.pop()
        if callable(item):
            item()
            continue
        node, in_pre, p_lines, root = item
        if isinstance(node, Tag):
            name, classes = node.name.lower(), {c.lower() for c in node.get_attribute_list("class")}
            dropped = name in DROPPED_TAGS or _is_ad(node) or _is_hidden(node) or _is_mark(node, classes)
            if dropped and not root:  # what a selector chose is read, even a <title>
                continue
            if name == "br":
                lines.br()
                continue
            if name == "img" and "emoji" in classes:  # WordPress's picture of an emoji: its alt is the character
                lines.text(str(node.get("alt") or ""))
                continue
            if classes & LINE_CLASSES or (name == "p" and p_lines):
                edge = lines.line
            elif classes & STANZA_CLASSES or name in PARAGRAPH_TAGS or root:  # each --body match a stanza, as before
                edge = lines.gap
            else:
                edge = lines.line if name in BLOCK_TAGS else None
            if name in CELL_TAGS:
                lines.text(" ")
            if edge is not None:
                edge()
                stack.append(edge)
            children = node.contents
            if name == "details" and not node.has_attr("open"):  # closed: only its summary shows
                children = [child for child in children if isinstance(child, Tag) and child.name == "summary"]
            in_pre = in_pre or _keeps_newlines(node)
            stack.extend((child, in_pre, p_lines, False) for child in reversed(children))
        elif type(node) is NavigableString:  # subclasses are comments, CDATA, doctypes and script/style text
            if not in_pre:  # in HTML a newline in the source is only a space, but where newlines are kept
                lines.text(_HTML_SPACE.sub(" ", str(node)))
                continue
            for i, piece in enumerate(line_breaks(str(node)).split("\n")):
                if i:
                    lines.br()
                lines.text(piece)
    return "".join(lines.parts)


def element_text(element: Tag) -> str:
    """The poem text of ``element``: lines and stanzas from the markup, cleaned by :func:`normalize_text`."""
    return normalize_text(_layout([element]))


def select_poem(soup: BeautifulSoup, css: str) -> str:
    """The text of every element ``css`` selects (an element inside another match counts once), each a block: a
    stanza, or a line where it is one (``<div class="line">``)."""
    matches = soup.select(css)
    chosen = {id(m) for m in matches}  # by identity: Tags compare equal when their markup is equal
    outermost = [m for m in matches if not any(id(parent) in chosen for parent in m.parents)]
    return normalize_text(_layout(outermost))


def poem_lang(soup: BeautifulSoup, css: str) -> str | None:
    """The language a page gives the poem ``css`` selects: the ``lang`` (or ``xml:lang``) of its first element or of
    the nearest element around it (``<html lang="es">``); None where none says, or says no language tag."""
    element = soup.select_one(css)
    for tag in [element, *element.parents] if element is not None else []:
        value = tag.get("lang", tag.get("xml:lang"))
        if value is not None:  # the nearest says, even lang="" (unknown): an outer one is about other text
            return language_tag(value)
    return None


def select_line(soup: BeautifulSoup, css: str) -> str:
    """The text of the first element ``css`` selects, on one line (a title, an author); "" when none matches."""
    element = soup.select_one(css)
    return " ".join(element_text(element).split()) if element is not None else ""
