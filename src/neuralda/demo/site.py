"""A list of poems served as a small website on 127.0.0.1, so the demo runs the real scraper and nothing leaves.

``with serve_poems(poems) as site: scrape(site.config(output, cache_dir))`` scrapes every poem back.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..corpus import Poem, normalize_text
from ..scrape import ScrapeConfig

# status, headers, body; a body given as chunks is streamed without Content-Length (the connection's end ends it).
Response = tuple[int, dict[str, str], bytes | Iterable[bytes]]
Respond = Callable[[str, Message], Response]

SELECTORS = {"links": "ul.poems a", "next": "a.next", "title": "h1.title", "body": "div.poem", "author_css": ".author"}
DEMO_DELAY = 0.01  # our own server on this machine: politeness costs nothing to show, so keep it short
ROBOTS_TXT = "User-agent: *\nDisallow: /drafts/\n"
_HTML = {"Content-Type": "text/html; charset=utf-8"}


@contextmanager
def serve(respond: Respond) -> Iterator[str]:
    """Serve GET requests with ``respond(path, headers)`` on 127.0.0.1, a free port, a background thread.

    Yields the base URL (``http://127.0.0.1:PORT``); the server stops when the block ends.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = respond(self.path, self.headers)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.end_headers()
                    for chunk in body:
                        self.wfile.write(chunk)
                        self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on this response (too big, too slow): that is its right

        def log_message(self, format: str, *args) -> None:
            pass  # the scraper reports what happened; a request log on stderr would only interleave with it

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="neuralda-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "poem"


def _page(title: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} | neuralda demo</title></head>\n<body>\n"
        '<nav><a href="/">All poems</a></nav>\n'
        f"<main>\n{body}\n</main>\n<footer>Served by neuralda on this machine only.</footer>\n</body></html>\n"
    ).encode()


def poem_html(poem: Poem) -> str:
    """A poem as markup: a ``<p>`` per stanza, ``<br>`` between its lines."""
    stanzas = normalize_text(poem.text).split("\n\n")
    paragraphs = ("<p>" + "<br>\n".join(html.escape(line) for line in s.split("\n")) + "</p>" for s in stanzas)
    author = f'<p class="author">{html.escape(poem.author)}</p>\n' if poem.author else ""
    return (
        f'<h1 class="title">{html.escape(poem.title)}</h1>\n{author}<div class="poem">\n'
        + "\n".join(paragraphs)
        + "\n</div>"
    )


def build_site(poems: list[Poem], per_page: int = 10) -> dict[str, bytes]:
    """Every page of the site by path: index pages with a pager, one page per poem, and robots.txt."""
    paths = [f"/poems/{i + 1}-{_slug(p.title)}/" for i, p in enumerate(poems)]
    pages = {path: _page(p.title, poem_html(p)) for path, p in zip(paths, poems)}
    n_index = max(1, -(-len(poems) // per_page))
    for k in range(n_index):
        chunk = range(k * per_page, min(len(poems), (k + 1) * per_page))
        items = "\n".join(f'<li><a href="{paths[i]}">{html.escape(poems[i].title)}</a></li>' for i in chunk)
        pager = []
        if k > 0:
            pager.append(f'<a class="prev" href="{"/" if k == 1 else f"/page/{k}/"}">Previous</a>')
        if k + 1 < n_index:
            pager.append(f'<a class="next" href="/page/{k + 2}/">Next</a>')
        body = f'<h1>Poems, page {k + 1}</h1>\n<ul class="poems">\n{items}\n</ul>\n'
        body += f'<div class="pager">{" ".join(pager)}</div>'
        pages["/" if k == 0 else f"/page/{k + 1}/"] = _page(f"Poems, page {k + 1}", body)
    pages["/robots.txt"] = ROBOTS_TXT.encode("ascii")
    return pages


@dataclass
class DemoSite:
    """A running demo site: its first index page and the selectors that fit it."""

    url: str
    selectors: dict[str, str]

    def config(self, output: str, cache_dir: str, progress: bool = True) -> ScrapeConfig:
        """Scrape options for this site; ``cache_dir`` is asked for since each run's port makes new cache entries."""
        return ScrapeConfig(
            start_urls=[self.url],
            output=output,
            cache_dir=cache_dir,
            delay=DEMO_DELAY,
            timeout=10.0,
            progress=progress,
            **self.selectors,
        )


@contextmanager
def serve_poems(poems: list[Poem], per_page: int = 10) -> Iterator[DemoSite]:
    """Serve ``poems`` as a website on 127.0.0.1 for the duration of the block; yields the DemoSite."""
    pages = build_site(poems, per_page)

    def respond(path: str, headers: Message) -> Response:
        path = path.split("?", 1)[0]
        if path not in pages:
            return 404, _HTML, _page("Not found", "<p>No such page.</p>")
        content_type = "text/plain; charset=utf-8" if path == "/robots.txt" else _HTML["Content-Type"]
        return 200, {"Content-Type": content_type}, pages[path]

    with serve(respond) as base:
        yield DemoSite(url=base + "/", selectors=dict(SELECTORS))
