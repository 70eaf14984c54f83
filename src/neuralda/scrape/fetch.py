"""Polite HTTP: robots.txt first, one request at a time per host, retries with backoff, size and time limits, a cache.

Named after Scrapy's settings (ROBOTSTXT_OBEY, DOWNLOAD_DELAY, RETRY_TIMES, HTTPCACHE), which scraping people know.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import math
import posixpath
import re
import socket
import ssl
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from ..errors import NeuraldaError, shown
from ..files import atomic_write, parse_json

MAX_PAGE_BYTES = 5 * 1024 * 1024  # after gzip too: a small gzip bomb must not become gigabytes in memory
MAX_ROBOTS_BYTES = 500 * 1024  # of a longer robots.txt, the first 500 KiB are read (RFC 9309, section 2.5)
ROBOTS_MAX_AGE = 24 * 3600.0  # seconds a robots.txt is kept before it is asked for again (RFC 9309, section 2.4)
MAX_REDIRECTS = 5
MAX_WAIT = 120.0  # a server asking for a longer Retry-After gets the page skipped, not a shorter wait
MAX_DELAY = 3600.0  # seconds between requests to a host: a robots.txt asking for more gets the host left alone
MAX_TIMEOUT = 600.0  # seconds for a response: a server that slow is as good as down
MAX_RETRIES = 10  # each waits up to MAX_WAIT: more would keep a run on one dead page for hours
REDIRECTS = frozenset({301, 302, 303, 307, 308})
NOT_RETRIED = frozenset({501, 505})  # 5xx that say the request will never work: not implemented, HTTP version
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")  # RFC 3986, 2.3
_ASCII_SHOWN = "".join(chr(c) for c in range(33, 127))
_DEFAULT_PORTS = {"http": 80, "https": 443}
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 64 * 1024
_PRODUCT_TOKEN = re.compile(r"[a-z_-]*")  # RFC 9309, section 2.2.1


class FetchError(NeuraldaError):
    """A page that could not be had; ``reason`` says why in a few words, ``robots`` whether robots.txt forbade it."""

    def __init__(self, url: str, reason: str, robots: bool = False):
        reason = shown(reason)  # it may quote what a server sent: a Location, a Content-Type, a status line
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.robots = robots


class _Retryable(Exception):
    """A timeout or dropped connection: worth another try after a pause."""


@dataclass
class Page:
    """A page as fetched: ``url`` is where it was found after redirects; ``body`` is decompressed bytes."""

    url: str
    content_type: str
    body: bytes
    fetched_at: str = ""  # ISO 8601, UTC: when it came from the site, even when read back from the cache


@dataclass
class _Response:
    url: str
    status: int
    headers: Message
    body: bytes


# --- URLs -------------------------------------------------------------------------------------------------------


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The absolute http(s) form of ``url``: no fragment, lower-case scheme and host, no default port; else None."""
    try:
        parts = urlsplit(urljoin(base, url.strip()) if base else url.strip())
        port = parts.port
        if parts.hostname:
            parts.hostname.encode("idna")  # the check a connection would make: labels of 1 to 63 characters
    except ValueError:  # "http://[oops", a port out of range, "www..example.com": not a URL anyone can follow
        return None
    # "x\x1bc.com": no host, and an ESC for the terminal; "a b.com": no host either (http.client refuses it).
    if parts.hostname and (not parts.hostname.isprintable() or " " in parts.hostname):
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    # Quote only what is unsafe, so "/a%20b" and "/a b" become the same URL and an encoded "/" keeps its meaning.
    # A byte that is not UTF-8 (from the command line, as a lone surrogate) is sent as that byte: "%FF".
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~", errors="surrogateescape")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=-._~?", errors="surrogateescape")
    return urlunsplit((scheme, netloc, path, query, ""))


def is_web_page(content_type: str) -> bool:
    """Whether a response of this Content-Type is a page to read a poem from: HTML, XML (an Atom feed of a blog's
    poems too) or plain text, or no type at all (read as browsers sniff one); not a PDF, an image or a download."""
    mime = content_type.split(";", 1)[0].strip().lower()
    xml = mime == "application/xml" or (mime.endswith("+xml") and not mime.startswith("image/"))  # not SVG
    return not mime or mime.startswith("text/") or xml


# Links by whose name a file is known not to be a page: not requested (a server tells the type only with the file).
FILE_SUFFIXES = frozenset(
    ".pdf .epub .mobi .djvu .doc .docx .odt .rtf .zip .gz .tgz .rar .7z .jpg .jpeg .png .gif .webp .avif .svg .bmp "
    ".tif .tiff .ico .mp3 .m4a .ogg .wav .flac .mp4 .m4v .webm .mov .avi".split()
)


def is_file_link(url: str) -> bool:
    """Whether ``url``'s path names a PDF, an image, a sound, a video, a document or an archive."""
    return posixpath.splitext(urlsplit(url).path.lower())[1] in FILE_SUFFIXES


def host_of(url: str) -> str:
    """The host (and port) part of a normalised URL: the unit of politeness and of "stays on the host"."""
    return urlsplit(url).netloc


# --- robots.txt (RFC 9309) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobotsRule:
    """One Allow or Disallow line: its path pattern as the literal parts between its ``*``, and whether a ``$`` ends
    it."""

    allowed: bool
    length: int  # of the pattern as written: the longest matching pattern wins
    parts: tuple[str, ...]
    anchored: bool

    @classmethod
    def parse(cls, allowed: bool, pattern: str) -> RobotsRule:
        # Split before the escapes are read: "%2A" is a literal "*" (RFC 9309, section 2.2.3), not a wildcard.
        parts = tuple(robots_form(part) for part in pattern.rstrip("$").split("*"))
        return cls(allowed, len(pattern), parts, pattern.endswith("$"))

    def matches(self, path: str) -> bool:
        """Whether the pattern matches the start of ``path`` (all of it when anchored). Each part is found leftmost
        after the one before, which is all "*" needs: no backtracking, so "/*a*a*a*a*a*a*a*a*x" takes as long as
        "/a" (a regular expression of it took seconds per URL, and hours with a few more stars)."""
        first, *rest = self.parts
        if not path.startswith(first):
            return False
        if not rest:
            return not self.anchored or path == first
        middle, last = (rest[:-1], rest[-1]) if self.anchored else (rest, "")
        end = len(first)
        for part in middle:
            found = path.find(part, end)
            if found < 0:
                return False
            end = found + len(part)
        return not self.anchored or (path.endswith(last) and len(path) - len(last) >= end)


@dataclass(frozen=True)
class Robots:
    """What one host's robots.txt lets us do; ``deny_all`` is the reason when the whole host is off limits."""

    rules: tuple[RobotsRule, ...] = ()
    crawl_delay: float | None = None
    deny_all: str | None = None

    def allows(self, url: str) -> bool:
        if self.deny_all:
            return False
        parts = urlsplit(url)
        path = robots_form(parts.path or "/") + (f"?{robots_form(parts.query)}" if parts.query else "")
        # The longest matching pattern wins and Allow wins a tie (RFC 9309, section 2.2.2).
        best: tuple[int, bool] | None = None
        for rule in self.rules:
            if rule.matches(path):
                key = (rule.length, rule.allowed)
                best = key if best is None or key > best else best
        return best is None or best[1]


def robots_form(text: str) -> str:
    """A path or pattern as robots.txt rules compare them (RFC 9309, section 2.2.2): an escape of an unreserved
    character read ("%7E" is "~"), any other kept, in capitals ("%2f" is "%2F", never the "/" that separates a
    path's parts), and characters outside ASCII written as escapes of their UTF-8 ("é" is "%C3%A9")."""

    def read(escape: re.Match) -> str:
        char = chr(int(escape[1], 16))
        return char if char in _UNRESERVED else escape[0].upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", read, quote(text, safe=_ASCII_SHOWN))


def _product_token(user_agent: str) -> str:
    """The part of a user agent that robots.txt groups name, lower-cased: "VerseBot/2.0 (+mailto:me)" is "versebot".

    Also of a robots.txt line, as Google's reference parser reads one: "User-agent: neuralda/0.1.0", copied from a
    server log, is meant for neuralda.
    """
    return _PRODUCT_TOKEN.match(user_agent.strip().lower())[0]


def parse_robots(text: str, user_agent: str) -> Robots:
    """The rules of robots.txt ``text`` that apply to ``user_agent``: its own groups if any, else those for ``*``."""
    token = _product_token(user_agent)
    groups: list[tuple[list[str], list[RobotsRule], list[float]]] = []
    in_agents = False
    # A BOM (Windows editors write one) would make the first line "\ufeffUser-agent" and hide its whole group.
    for raw in text.removeprefix("\ufeff").splitlines():
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if not in_agents:
                groups.append(([], [], []))
            groups[-1][0].append("*" if value.startswith("*") else _product_token(value))
            in_agents = True
            continue
        in_agents = False
        if not groups:
            continue
        if key in ("allow", "disallow") and value:
            groups[-1][1].append(RobotsRule.parse(key == "allow", value))
        elif key == "crawl-delay":
            try:
                delay = float(value)
            except ValueError:
                continue  # a malformed Crawl-delay is ignored, as other crawlers do
            if math.isfinite(delay) and delay >= 0:  # "nan", "inf" and "-1" are as malformed
                groups[-1][2].append(delay)
    ours = [g for g in groups if token and token in g[0]] or [g for g in groups if "*" in g[0]]
    rules = tuple(rule for g in ours for rule in g[1])
    delays = [d for g in ours for d in g[2]]
    crawl_delay = max(delays) if delays else None
    if crawl_delay is not None and crawl_delay > MAX_DELAY:
        # Coming back sooner than asked would be rude, and waiting that long between pages is no scrape at all.
        too_slow = f"robots.txt asks for {crawl_delay:g} s between requests (over {MAX_DELAY:g}); staying away"
        return Robots(deny_all=too_slow)
    return Robots(rules=rules, crawl_delay=crawl_delay)


# --- waiting -----------------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, and no number to float()
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # asctime's form, or "-0000": an HTTP date is in GMT (RFC 9110, section 5.6.7)
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def backoff_wait(attempt: int, delay: float, retry_after: float | None) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): doubling from the delay, at least Retry-After."""
    exponential = min(MAX_WAIT, max(delay, 0.1) * 2 ** (attempt - 1))
    return max(exponential, retry_after or 0.0)


# --- the cache ---------------------------------------------------------------------------------------------------


def _cache_path(cache_dir: Path, url: str) -> Path:
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
    return cache_dir / digest[:2] / f"{digest}.page"


def read_cached(cache_dir: Path, url: str) -> Page | None:
    """The cached page for ``url``, or None when there is none (a damaged entry counts as none)."""
    try:
        data = _cache_path(cache_dir, url).read_bytes()
    except OSError:
        return None
    header, _, body = data.partition(b"\n")
    try:
        meta = parse_json(header)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("requested") != url:
        return None
    if meta.get("sha256") != hashlib.sha256(body).hexdigest():  # cut short or altered: half a poem, fetched again
        return None
    return Page(
        url=str(meta.get("url") or url),
        content_type=str(meta.get("content_type") or ""),
        body=body,
        fetched_at=str(meta.get("fetched_at") or ""),
    )


def write_cached(cache_dir: Path, url: str, page: Page) -> None:
    """Store ``page`` as fetched for ``url``: one file, a JSON header line (with the body's SHA-256) then the body."""
    meta = {
        "requested": url,
        "url": page.url,
        "content_type": page.content_type,
        "fetched_at": page.fetched_at,
        "sha256": hashlib.sha256(page.body).hexdigest(),
    }
    atomic_write(_cache_path(cache_dir, url), json.dumps(meta).encode("utf-8") + b"\n" + page.body)


# --- one HTTP exchange -------------------------------------------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each given only the time left before ``deadline``.

    A socket timeout bounds one read, not a response: a server sending a byte now and then would never trip it.
    """

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        # A file, not the bare socket: http.client closes the socket after the headers, and only an open file of it
        # keeps it from really closing before the body is read.
        self._file = sock.makefile("rb", buffering=0)
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._sock.settimeout(remaining)
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """A response whose status line, headers and body all arrive before one deadline, or raise TimeoutError."""

    def __init__(self, sock: socket.socket, *args, deadline: float, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # http.client's plain file of the socket: every read must go through the deadline instead
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


def _too_big(url: str) -> FetchError:
    return FetchError(url, f"larger than {MAX_PAGE_BYTES // (1024 * 1024)} MB; abandoned")


def _read_body(resp: http.client.HTTPResponse, url: str, keep_first: int | None = None) -> bytes:
    """Read at most MAX_PAGE_BYTES (raw and decompressed); stop early rather than read it all. With ``keep_first``,
    a longer body is its first ``keep_first`` bytes (decompressed) up to its last line end, not an error.

    A compressed body that is damaged or cut short is a FetchError, and one shorter than its Content-Length is tried
    again: half a poem must not pass for a whole one. A gzip body may be several gzip files one after the other
    (RFC 1952: "a series of members"); each is read, and other bytes after the end are ignored, as browsers do.
    """
    limit = MAX_PAGE_BYTES if keep_first is None else keep_first
    length = (resp.getheader("Content-Length") or "").strip()
    if keep_first is None and length.isdigit() and int(length) > MAX_PAGE_BYTES:
        raise _too_big(url)
    encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate", "identity"):
        raise FetchError(url, f"unsupported Content-Encoding {encoding!r}")
    inflater = None if encoding == "identity" else zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header
    damaged = FetchError(url, f"damaged {encoding} body; abandoned")
    parts, raw_size, size, ended = [], 0, 0, False
    while size <= limit:
        chunk = resp.read1(_READ_CHUNK)
        if not chunk:
            break
        raw_size += len(chunk)
        if raw_size > MAX_PAGE_BYTES:
            raise _too_big(url)
        while inflater is not None and not ended:
            # max_length bounds what one call may inflate, so memory never exceeds the limit by more than a chunk.
            try:
                out = inflater.decompress(chunk, limit - size + 1)
            except zlib.error:
                raise damaged from None
            size += len(out)
            parts.append(out)
            if size > limit or not inflater.eof:
                break
            chunk = inflater.unused_data
            if _GZIP_MAGIC.startswith(chunk):  # nothing yet after the stream, or the first byte of a member
                break
            if not chunk.startswith(_GZIP_MAGIC):  # padding or junk after the stream: ignored, as browsers do
                ended = True
                break
            inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # the next gzip member
        if inflater is None:
            size += len(chunk)
            parts.append(chunk)
    if size <= limit:  # read to its end
        if resp.length:  # the connection closed before the Content-Length it announced: half a page, worth a retry
            raise _Retryable(f"the connection closed {resp.length} bytes before the end of the page")
        if inflater is not None:
            if raw_size and not inflater.eof:  # the stream began but never ended: the connection closed mid-way
                raise damaged
            parts.append(inflater.flush())
            size += len(parts[-1])
    body = b"".join(parts)
    if size > limit:
        if keep_first is None:
            raise _too_big(url)
        return body[:keep_first].rpartition(b"\n")[0] + b"\n"  # no half line: "Disallow: /priv" allows "/public"
    return body


def _utf8_header(value: str | None) -> str | None:
    """A header value as browsers read it: http.client decodes its bytes as Latin-1, but raw UTF-8 is what servers
    send for an accented Location; a value that is not valid UTF-8 stays as it was."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _http_get(url: str, user_agent: str, timeout: float, keep_first: int | None = None) -> _Response:
    """One GET of ``url``, the whole exchange within ``timeout`` seconds (``keep_first``: see ``_read_body``)."""
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = connection(parts.hostname, parts.port, timeout=timeout)
    conn.response_class = partial(_DeadlineResponse, deadline=time.monotonic() + timeout)
    headers = {
        "User-Agent": user_agent,
        "Accept": "text/html,application/xhtml+xml;q=0.9,text/plain;q=0.8,*/*;q=0.5",
        "Accept-Encoding": "gzip",
        "Connection": "close",
    }
    resp = None
    try:
        # Not urlunsplit: since Python 3.12.4 and 3.11.10 it writes a lone path that starts with "//" as "////..."
        # (CPython gh-67693), the request for another page.
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        body = _read_body(resp, url, keep_first)
        return _Response(url=url, status=resp.status, headers=resp.headers, body=body)
    except TimeoutError:
        raise _Retryable(f"no complete answer within {timeout:g} s") from None
    except ssl.SSLCertVerificationError as e:  # the same certificate at the next try: not worth a wait
        raise FetchError(url, f"certificate not trusted ({e.verify_message or e.reason})") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Retryable(f"connection failed ({e or type(e).__name__})") from None
    finally:
        if resp is not None:
            resp.close()  # it holds the socket: closing it tells the server at once that we stopped reading
        conn.close()


# --- the fetcher -------------------------------------------------------------------------------------------------


@dataclass
class Fetcher:
    """Fetches pages one at a time, as the issue asks a good guest to; counts what it did."""

    user_agent: str
    delay: float = 1.0
    timeout: float = 30.0
    retries: int = 3
    cache_dir: Path | None = None
    refresh: bool = False
    pages_fetched: int = 0
    cache_hits: int = 0
    _robots: dict[str, tuple[Robots, float]] = field(default_factory=dict, repr=False)  # origin -> rules, when read
    _not_before: dict[str, float] = field(default_factory=dict, repr=False)
    _away: dict[str, str] = field(default_factory=dict, repr=False)  # host -> why it gets no more requests

    def __post_init__(self) -> None:
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise NeuraldaError(f"cannot create the HTTP cache folder {self.cache_dir}: {e.strerror}") from None

    def fetch(self, url: str, fresh: bool = False) -> Page:
        """The page at normalised ``url``, from the cache when there (``fresh``: from the site, as an index page
        that may list new poems); FetchError when it cannot be had."""
        if self.cache_dir is not None and not (self.refresh or fresh):
            page = read_cached(self.cache_dir, url)
            if page is not None:
                self.cache_hits += 1
                return page
        self._check_robots(url)
        resp = self._get_with_retries(url, check_robots=True)
        if resp.status != 200:
            raise FetchError(url, f"HTTP {resp.status}")
        page = Page(
            url=resp.url,
            content_type=resp.headers.get("Content-Type", ""),
            body=resp.body,
            fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if self.cache_dir is not None:
            write_cached(self.cache_dir, url, page)
        self.pages_fetched += 1
        return page

    def robots_for(self, url: str) -> Robots:
        """The robots.txt rules of ``url``'s origin, fetched once a day: 4xx means all allowed, 5xx or no answer
        none."""
        scheme, netloc = urlsplit(url)[:2]
        origin = f"{scheme}://{netloc}"
        if origin not in self._robots or time.monotonic() - self._robots[origin][1] > ROBOTS_MAX_AGE:
            robots_url = f"{origin}/robots.txt"
            why = None  # robots.txt unreachable: the whole host is off limits
            try:
                resp = self._get_with_retries(robots_url, check_robots=False, keep_first=MAX_ROBOTS_BYTES)
            except FetchError as e:
                why = e.reason
            else:
                if 200 <= resp.status < 300:  # any success: a proxy's 203 too
                    robots = parse_robots(resp.body.decode("utf-8", errors="replace"), self.user_agent)
                elif resp.status >= 500:  # one not retried (501, 505): unreachable all the same
                    why = f"HTTP {resp.status}"
                else:
                    robots = Robots()  # RFC 9309: a robots.txt that is not there (4xx) allows everything
            if why is not None:
                robots = Robots(deny_all=f"robots.txt unavailable ({why}); staying away from {netloc}")
            self._robots[origin] = robots, time.monotonic()
            # The pause after fetching robots.txt itself must already honour its Crawl-delay.
            self._not_before[netloc] = max(self._not_before.get(netloc, 0.0), time.monotonic() + self._delay_for(url))
        return self._robots[origin][0]

    def _check_robots(self, url: str) -> None:
        robots = self.robots_for(url)
        if not robots.allows(url):
            raise FetchError(url, robots.deny_all or "disallowed by robots.txt", robots=True)

    def _get_with_retries(self, url: str, check_robots: bool, keep_first: int | None = None) -> _Response:
        """A response that is not 408, 429 or 5xx, trying up to ``retries`` more times (Scrapy's RETRY_HTTP_CODES
        and every other 5xx but ``NOT_RETRIED``), waits doubling from the host's delay; FetchError when none came."""
        host = host_of(url)
        reason, retry_after = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                wait = backoff_wait(attempt, self._delay_for(url), retry_after)
                self._not_before[host] = max(self._not_before.get(host, 0.0), time.monotonic() + wait)
            if host in self._away:
                raise FetchError(url, self._away[host])
            try:
                resp = self._get_following_redirects(url, check_robots, keep_first)
            except _Retryable as e:
                reason, retry_after = str(e), None
                continue
            if resp.status in (408, 429) or (resp.status >= 500 and resp.status not in NOT_RETRIED):
                reason, retry_after = f"HTTP {resp.status}", parse_retry_after(resp.headers.get("Retry-After"))
                if retry_after is not None and retry_after > MAX_WAIT:
                    # Retry-After is about the server, not this page: its other pages may not be asked for either.
                    self._away[host] = f"{host} asked to wait {retry_after:.0f} s ({reason}); not requested"
                    raise FetchError(url, f"{reason}; the server asks to wait {retry_after:.0f} s, giving up")
                if retry_after is not None:  # also for the next page, when this was the last try
                    self._not_before[host] = max(self._not_before.get(host, 0.0), time.monotonic() + retry_after)
                continue
            return resp
        tries = "once" if self.retries == 0 else f"{self.retries + 1} times"
        raise FetchError(url, f"{reason} (tried {tries})")

    def _get_following_redirects(self, url: str, check_robots: bool, keep_first: int | None) -> _Response:
        """``url``'s answer after its redirects (``check_robots``: each target's robots.txt obeyed; ``keep_first``:
        see ``_read_body``)."""
        visited: set[str] = set()
        for _ in range(MAX_REDIRECTS + 1):
            visited.add(url)
            resp = self._get_once(url, keep_first)
            location = _utf8_header(resp.headers.get("Location"))
            if resp.status not in REDIRECTS or not location:
                return resp
            target = normalize_url(location, base=url)
            if target is None:
                raise FetchError(url, f"redirects to {location!r}, not an http(s) URL; not followed")
            # A page stays on its host; robots.txt is followed anywhere, as RFC 9309 (2.3.1.2) asks, and its rules
            # are the first host's ("example.org/robots.txt" -> "www.example.org/robots.txt").
            if check_robots and host_of(target) != host_of(url):
                raise FetchError(url, f"redirects to another host ({location}); not followed")
            if target in visited:
                # We send no cookies, so coming back to a URL means the same answer again: stop now, not after 5.
                raise FetchError(url, f"redirects in a loop (back to {target})")
            if check_robots:
                self._check_robots(target)
            url = target
        raise FetchError(url, f"more than {MAX_REDIRECTS} redirects")

    def _get_once(self, url: str, keep_first: int | None = None) -> _Response:
        host = host_of(url)
        pause = self._not_before.get(host, 0.0) - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        try:
            return _http_get(url, self.user_agent, self.timeout, keep_first)
        finally:
            # Counted from the end of this exchange, so the gap the server sees is never shorter than the delay.
            self._not_before[host] = time.monotonic() + self._delay_for(url)

    def _delay_for(self, url: str) -> float:
        scheme, netloc = urlsplit(url)[:2]
        robots = self._robots.get(f"{scheme}://{netloc}", (Robots(), 0.0))[0]
        crawl_delay = robots.crawl_delay or 0.0
        return max(self.delay, crawl_delay)
