"""Scrape a poet's poems from a website into a corpus, politely: ``scrape(ScrapeConfig(start_urls, output, ...))``.

A start URL is an index page: ``links`` selects the poem links on it and ``next`` the next index page; on a poem
page ``title`` and ``body`` select the title and the poem. Without ``links`` the start URLs are poem pages.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..corpus import Poem, check_language, clean_field
from ..errors import NeuraldaError, NeuraldaWarning, listed
from ..files import append_line, parse_json
from .extract import check_selector, parse_html, poem_lang, select_line, select_links, select_poem
from .fetch import (
    MAX_DELAY, MAX_RETRIES, MAX_TIMEOUT, Fetcher, FetchError, Page, host_of, is_file_link, is_web_page,
    normalize_url,
)
from .sites import SELECTOR_FIELDS, get_preset, list_presets

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

__all__ = ["ScrapeConfig", "ScrapeSummary", "apply_preset", "list_presets", "scrape"]
# Poem pages in a row that --body matches nothing on, before any poem was written, that stop a scrape: a wrong
# selector is said after a few requests, not after the whole site.
BODY_MISSES = 10


@dataclass
class ScrapeConfig:
    """Every setting of one scrape; the ``neuralda scrape`` flags map one to one onto these fields."""

    start_urls: list[str]
    output: str
    links: str | None = None  # CSS: the poem links on an index page
    next: str | None = None  # CSS: the link to the next index page
    title: str | None = None  # CSS: the title on a poem page (else the poem's first line)
    body: str | None = None  # CSS: the poem on a poem page
    author: str | None = None  # a name for every poem; wins over author_css
    author_css: str | None = None  # CSS: the author on a poem page
    lang: str | None = None  # the language of every poem (a BCP 47 tag); None: what each page says
    preset: str | None = None  # a known site whose selectors fill the ones not given
    max_poems: int | None = None  # stop once this many poems of the crawl are in the output (earlier runs count)
    max_pages: int | None = None  # index pages to visit at most
    delay: float = 1.0  # seconds between requests to a host (a larger robots.txt Crawl-delay wins)
    timeout: float = 30.0  # seconds for a whole response
    retries: int = 3  # more tries on 408, 429, 5xx and timeouts
    cache_dir: str | None = None  # None: the user's cache folder, neuralda/http
    refresh: bool = False  # fetch again what is in the cache
    user_agent: str | None = None  # None: neuralda/VERSION
    progress: bool = True


@dataclass
class ScrapeSummary:
    """What a scrape did; ``text()`` is what the user reads at the end."""

    poems_written: int = 0
    pages_fetched: int = 0  # index and poem pages downloaded (robots.txt not counted)
    cache_hits: int = 0
    robots_skipped: int = 0
    files_skipped: int = 0  # links to PDFs, images and other files: never requested
    failures: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)
    already_present: int = 0  # poems found that an earlier run had written (each once, however often linked)
    output: str = ""

    def text(self) -> str:
        earlier = f" ({self.already_present} already there)" if self.already_present else ""
        lines = [
            f"wrote {self.poems_written} poem{'s' * (self.poems_written != 1)} to {self.output}{earlier}",
            f"pages fetched: {self.pages_fetched}, from the cache: {self.cache_hits}",
            f"skipped for robots.txt: {self.robots_skipped}",
            f"links to files (PDFs, images) skipped: {self.files_skipped}",
            f"failures: {len(self.failures)}",
        ]
        lines += [f"  {url}: {reason}" for url, reason in self.failures]
        return "\n".join(lines)


def apply_preset(config: ScrapeConfig) -> ScrapeConfig:
    """``config`` with the preset's selectors filling those not given explicitly."""
    if not config.preset:
        return config
    missing = {k: v for k, v in get_preset(config.preset).selectors().items() if getattr(config, k) is None}
    return replace(config, **missing)


def _check_config(config: ScrapeConfig) -> None:
    if not listed(config.start_urls, "start_urls"):
        raise NeuraldaError("give at least one start URL")
    for url in config.start_urls:
        if normalize_url(url) is None:
            raise NeuraldaError(f"not an http(s) URL with a valid host: {url!r}")
    if not config.body:
        raise NeuraldaError("no --body selector: give --body CSS or a --preset (see --list-presets)")
    for name in SELECTOR_FIELDS:
        css = getattr(config, name)
        if css is not None:
            check_selector(name.replace("_", "-"), css)
    # Ranges, not "< 0" tests: NaN fails every comparison, so it fails these too (and infinity the upper bound).
    if not 0 <= config.delay <= MAX_DELAY:
        raise NeuraldaError(f"--delay must be from 0 to {MAX_DELAY:g} seconds, got {config.delay:g}")
    if not 0 < config.timeout <= MAX_TIMEOUT:
        raise NeuraldaError(f"--timeout must be above 0 and at most {MAX_TIMEOUT:g} seconds, got {config.timeout:g}")
    if not 0 <= config.retries <= MAX_RETRIES:
        raise NeuraldaError(f"--retries must be from 0 to {MAX_RETRIES}, got {config.retries}")
    # http.client refuses a header with a newline or a character beyond Latin-1 only at the first request, mid-run.
    if config.user_agent and not (config.user_agent.isascii() and config.user_agent.isprintable()):
        raise NeuraldaError(f"--user-agent must be printable ASCII, got {config.user_agent!r}")
    for name in ("max_poems", "max_pages"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise NeuraldaError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    check_language(config.lang)


def _corpus_record(line: bytes) -> dict | None:
    """The poem record on one JSONL line (an object with a "text" string), None when the line is JSON but no
    poem; ValueError when it is not JSON."""
    record = parse_json(line.decode("utf-8", errors="replace").removeprefix("\ufeff"))  # a BOM: as read_corpus does
    return record if isinstance(record, dict) and isinstance(record.get("text"), str) else None


def _written(path: Path) -> tuple[dict[str, str], set[str]]:
    """URLs (with the text of the poem at each) and texts of the poems an earlier run wrote to ``path``, so this run
    adds only the missing ones.

    A file that is not a corpus is an error and stays as it was; only a torn last record is cut off, its bytes kept
    in ``PATH.torn`` (a last line the user left unfinished looks the same).
    """
    if not path.exists():
        return {}, set()
    if path.is_dir():
        raise NeuraldaError(f"{path}: is a folder; -o wants a .jsonl file")
    data = path.read_bytes()
    lines = data.split(b"\n")  # the last is b"" when the file ends with a newline
    urls: dict[str, str] = {}
    texts = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = number == len(lines)
        try:
            record = _corpus_record(line)
        except ValueError:
            record = None
            if last and line.startswith(b"{"):
                # Every line before it is a record, so this is what a run killed mid-write leaves: drop it, its poem
                # is fetched again. Anything else (whole JSON too: a one-line export) is the user's and never cut.
                torn = path.with_name(path.name + ".torn")
                append_line(torn, line)  # before the cut, and added to: no byte of the user's is ever lost
                os.truncate(path, len(data) - len(line))
                warnings.warn(
                    f"{path}:{number}: an unfinished record (a scrape killed mid-write?) moved to {torn}", NeuraldaWarning
                )
                break
        if record is None:
            raise NeuraldaError(f"{path}:{number}: not a corpus line (JSONL); write to another -o file")
        if last:
            append_line(path, "")  # a complete last line without its newline: end it, so the next one starts fresh
        if record.get("url"):
            urls[normalize_url(str(record["url"])) or str(record["url"])] = record["text"]
        texts.add(record["text"])
    return urls, texts


class _Progress:
    """A tqdm bar on a terminal; a plain line per index page when stderr is a file or a pipe."""

    def __init__(self, enabled: bool, total: int | None):
        self.bar = None
        self.plain = enabled and not sys.stderr.isatty()
        if enabled and not self.plain:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=" poems", desc="scraping", file=sys.stderr, dynamic_ncols=True)

    def update(self, index_pages: int, found: int, written: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"index pages {index_pages}, poems found {found}", refresh=False)
            self.bar.update(written - self.bar.n)

    def index_page(self, url: str, links: int, written: int) -> None:
        if self.plain:
            print(f"index page {url}: {links} new poem link(s), {written} poem(s) written so far", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Crawl:
    """One scrape's state: what was seen, what went wrong (to explain a run that wrote nothing)."""

    config: ScrapeConfig
    fetcher: Fetcher
    output: Path
    done: dict[str, str]  # URLs written, as asked for and as redirected to -> the text of the poem written
    texts: set[str]  # poems written: the same poem linked as "a.html?ref=home" or under a redirect is written once
    progress: _Progress
    summary: ScrapeSummary
    index_pages: int = 0
    found: set[str] = field(default_factory=set)  # texts of this crawl's poems in the output: what max_poems counts
    poem_urls: set[str] = field(default_factory=set)
    index_urls: set[str] = field(default_factory=set)
    start_failures: list[tuple[str, str]] = field(default_factory=list)
    pages_without_links: list[str] = field(default_factory=list)
    off_host_links: list[str] = field(default_factory=list)
    pages_without_body: list[str] = field(default_factory=list)
    misses_in_a_row: int = 0  # poem pages --body matched nothing on, since the last it matched
    earlier: set[str] = field(init=False)  # poems in the output before this scrape

    def __post_init__(self) -> None:
        self.earlier = set(self.texts)

    def full(self) -> bool:
        limit = self.config.max_poems
        return limit is not None and len(self.found) >= limit

    def fetch(self, url: str, is_start: bool = False, fresh: bool = False) -> tuple[BeautifulSoup, Page] | None:
        """The page at ``url``, parsed and as fetched (``fresh``: not from the cache), or None after recording why
        not."""
        try:
            page = self.fetcher.fetch(url, fresh)
            if not is_web_page(page.content_type):  # a PDF or an image linked from the index: no poem to read
                raise FetchError(url, f"not a web page ({page.content_type}); skipped")
        except FetchError as e:
            if e.robots:
                self.summary.robots_skipped += 1
            else:
                self.summary.failures.append((url, e.reason))
            if is_start:
                self.start_failures.append((url, e.reason))
            return None
        return parse_html(page.body, page.content_type, self.config.lang), page

    def crawl(self, start: str) -> None:
        """Walk the index pages from ``start`` through the pager, writing each page's poems before the next."""
        host, url, is_start = host_of(start), start, True
        while url is not None and not self.full():
            if self.config.max_pages is not None and self.index_pages >= self.config.max_pages:
                return
            if url in self.index_urls:
                return  # the pager came back to a page it showed before: a loop, not more poems
            self.index_urls.add(url)
            if self.config.links is None and url in self.done:  # a poem page an earlier run wrote: not fetched again
                self.poem_urls.add(url)
                self.found.add(self.done[url])
                return
            # An index page comes from the site each time: the same command again finds the poems added since.
            fetched = self.fetch(url, is_start, fresh=self.config.links is not None)
            if fetched is None:
                return
            soup, page = fetched
            self.index_pages += 1
            if self.config.links is None:
                self.poem_urls.add(url)
                self.write_poem(url, fetched)
                return
            links = self.new_poem_links(select_links(soup, self.config.links, page.url), host, page.url)
            self.progress.index_page(url, len(links), self.summary.poems_written)
            for link in links:
                if self.full():
                    return
                if link in self.done:
                    self.found.add(self.done[link])
                else:
                    self.write_poem(link, self.fetch(link))
                self.progress.update(self.index_pages, len(self.poem_urls), self.summary.poems_written)
            url, is_start = self.next_page(soup, page.url, host), False

    def new_poem_links(self, hrefs: list[str], host: str, page_url: str) -> list[str]:
        """Poem URLs not seen before on this host, in page order; a link to another host is never followed."""
        if not hrefs:
            self.pages_without_links.append(page_url)
        new = []
        for href in hrefs:
            url = normalize_url(href)
            if url is None:
                continue
            if host_of(url) != host:
                self.off_host_links.append(url)
            elif is_file_link(url):  # not requested at all: the type a server sends comes with the whole file
                self.summary.files_skipped += 1
            elif url not in self.poem_urls:
                self.poem_urls.add(url)
                new.append(url)
        return new

    def next_page(self, soup: BeautifulSoup, page_url: str, host: str) -> str | None:
        if not self.config.next:
            return None
        for href in select_links(soup, self.config.next, page_url):
            url = normalize_url(href)
            if url is not None and host_of(url) == host:
                return url
        return None

    def write_poem(self, url: str, fetched: tuple[BeautifulSoup, Page] | None) -> None:
        """Extract the poem from a fetched page and append it to the output at once."""
        if fetched is None:
            return
        soup, page = fetched
        final = normalize_url(page.url) or url  # where a redirect led
        text = select_poem(soup, self.config.body)
        if not text:
            self.pages_without_body.append(url)
            self.summary.failures.append((url, f"--body {self.config.body!r} matched no text"))
            self.misses_in_a_row += 1
            if self.misses_in_a_row >= BODY_MISSES and not self.summary.poems_written:
                raise NeuraldaError(f"no poem written: {self.why_nothing()} (stopped: check --body)")
            return
        self.misses_in_a_row = 0
        if final in self.done or text in self.texts:
            self.done[url] = self.done.get(final, text)
            self.found.add(self.done[url])
            return
        title = select_line(soup, self.config.title) if self.config.title else ""
        if self.config.author is not None:
            author = clean_field(self.config.author)  # as corpus import has it: a byte not UTF-8 is U+FFFD
        else:
            author = select_line(soup, self.config.author_css) if self.config.author_css else ""
        poem = Poem(
            title=title or text.split("\n", 1)[0], author=author, text=text, url=final, fetched_at=page.fetched_at or None,
            lang=self.config.lang or poem_lang(soup, self.config.body),
        )
        append_line(self.output, json.dumps(poem.to_dict(), ensure_ascii=False))
        self.done.update(dict.fromkeys((url, final), text))
        self.texts.add(text)
        self.found.add(text)
        self.summary.poems_written += 1

    def why_nothing(self) -> str:
        """The one-line reason a scrape that found no poem at all gives the user."""
        config = self.config
        if len(self.start_failures) == len(config.start_urls):
            url, reason = self.start_failures[0]
            return f"the start page failed: {url}: {reason}"
        if self.pages_without_body:
            return (
                f"--body {config.body!r} matched nothing on {len(self.pages_without_body)} poem page(s), "
                f"e.g. {self.pages_without_body[0]}"
            )
        if self.off_host_links and not self.poem_urls:
            return (
                f"every poem link leads to another host (e.g. {self.off_host_links[0]}); "
                "only the start URL's host is scraped"
            )
        if self.pages_without_links and not self.poem_urls:
            return f"--links {config.links!r} matched no link on {self.pages_without_links[0]}"
        if self.summary.failures:
            url, reason = self.summary.failures[0]
            return f"every poem page failed, e.g. {url}: {reason}"
        if self.summary.robots_skipped:
            return f"robots.txt disallows all {self.summary.robots_skipped} poem page(s) found"
        if self.summary.files_skipped and not self.poem_urls:
            return f"the {self.summary.files_skipped} link(s) found lead to files (PDFs, images), not pages"
        return "no poem was found"


def default_cache_dir() -> Path:
    """Where pages are cached unless ``--cache DIR`` says otherwise."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("neuralda")) / "http"


def scrape(config: ScrapeConfig) -> ScrapeSummary:
    """Scrape the poems ``config`` describes into its output file; NeuraldaError when not one poem was found."""
    config = apply_preset(config)
    _check_config(config)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fetcher = Fetcher(
        user_agent=config.user_agent or f"neuralda/{__version__}",
        delay=config.delay,
        timeout=config.timeout,
        retries=config.retries,
        cache_dir=Path(config.cache_dir) if config.cache_dir else default_cache_dir(),
        refresh=config.refresh,
    )
    summary = ScrapeSummary(output=str(output))
    progress = _Progress(config.progress, config.max_poems)
    crawl = _Crawl(config, fetcher, output, *_written(output), progress, summary)
    try:
        for start in dict.fromkeys(normalize_url(u) for u in config.start_urls):
            if crawl.full():
                break
            crawl.crawl(start)
    finally:
        progress.close()
        summary.pages_fetched, summary.cache_hits = fetcher.pages_fetched, fetcher.cache_hits
        summary.already_present = len(crawl.found & crawl.earlier)
    if summary.poems_written == 0 and summary.already_present == 0:
        raise NeuraldaError(f"no poem written: {crawl.why_nothing()}")
    return summary
