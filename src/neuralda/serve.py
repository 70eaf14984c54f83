"""``neuralda serve``: a page for writing poems with trained runs, and the JSON API behind it.

The page (``static/``) is plain HTML, CSS and JavaScript. Each model is loaded once per (run, checkpoint) and only
read after that. Requests that arrive while poems like theirs are being written (same model, start, length and
sampling) are written together in the next batched pass (``Batcher``): writing is a Python loop over tokens that
holds the GIL, so side-by-side passes would only take turns. Each poem draws from its own seed, so a poem is the
same whatever it was batched with; a model whose batches are not checked to round each poem as alone
(``batch_invariant``) writes each request alone. A poem whose client has left stops being written (``Writers``).
Only the runs and checkpoints named at start can be asked for: a request names them, never a path.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Literal, Sequence, TypeVar

import anyio
import h11
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import __version__
from .errors import NeuraldaError, listed
from .evaluate import perplexity
from .generate import (
    FORMS, MIN_TEMPERATURE, CopyGuards, SamplingConfig, Stopped, batch_invariant, default_start, write_poems
)
from .report import _number, perplexity_value
from .run import Run
from .tokenizer import is_word, tokenize

MAX_BODY = 16 * 1024  # bytes; a request is a few short fields
MAX_WORDS = 500
MAX_START = 200  # characters
MAX_NAME = 255  # a run's name is its folder's: up to 255 bytes, each shown as at most one character
MAX_BATCH = 32  # poems written in one pass
MAX_LINES = 100
MAX_PENALTY = 10.0
# Each length asked for builds an index of the training poems' word runs, kept while the server runs.
MAX_COPY = 12
MAX_PENDING = 4 * MAX_BATCH  # poems asked for at once; more are answered 503 (each waits in memory, or a thread)
DISCONNECT_POLL = 0.1  # seconds between asking whether a waiting request's client is still there
REQUEST_TIMEOUT = 10.0  # seconds a client has to send a request's headers and body (a few hundred bytes)
MAX_CONNECTIONS = 512  # open at once, each a file descriptor: well below the 1,024 a process may have by default
MAX_AHEAD = 64 * 1024  # bytes a connection may send ahead of the answers it waits for
BACKLOG = 128  # connections the system holds before they are accepted
SHUTDOWN_GRACE = 10  # seconds the poems being written have to finish once the server is told to stop

T = TypeVar("T")

Form = Literal[tuple(FORMS)]  # type: ignore[valid-type]
UNREADABLE_BODY = (
    "the body could not be read as JSON (it must be UTF-8, with numbers of at most a few thousand digits and no "
    'deep nesting); send a JSON object such as {"start": "love", "words": 80}'
)


class GenerateRequest(BaseModel):
    """What to write; every number is bounded so one request cannot hold the server for long."""

    # strict: "5" is not a number and true is not 1; extra: a misspelt field is named, not ignored.
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    start: str | None = Field(
        None, max_length=MAX_START, description='the first word(s); empty: begin anywhere; none: "love" if the model knows it, else anywhere'
    )
    words: int = Field(120, ge=1, le=MAX_WORDS, description="at most this many words")
    temperature: float = Field(
        SamplingConfig.temperature, ge=MIN_TEMPERATURE, le=5, description="below 1: safer words; above 1: wilder ones"
    )
    top_k: int = Field(0, ge=0, description="keep the k likeliest tokens (0: all); at most the vocabulary size")
    top_p: float = Field(SamplingConfig.top_p, gt=0, le=1, description="keep the smallest set of tokens whose probability reaches p")
    repetition_penalty: float = Field(
        SamplingConfig.repetition_penalty, ge=1, le=MAX_PENALTY, description="above 1: words the poem has are less likely"
    )
    lines: int = Field(0, ge=0, le=MAX_LINES, description="at most this many lines (0: no limit)")
    form: Form = Field("free", description="lines per stanza: couplet 2, tercet 3, quatrain 4, free as the model likes")
    max_copy: int = Field(
        0, ge=0, le=MAX_COPY, description="no run of this many words copied from the training poems (0: no guard; else 2 or more)"
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="the same seed writes the same poem; none: random")
    run: str | None = Field(None, max_length=MAX_NAME, description="a served run's name (default: the first)")
    checkpoint: str | None = Field(None, max_length=200, description="best, last or epoch-N (default: best)")


class Poem(BaseModel):
    poem: str = Field(description="lines end with \\n; a blank line separates stanzas")
    words: int
    ms: float = Field(description="milliseconds spent writing it, waiting for its batch included")
    seed: int
    ended: bool = Field(description="whether the model ended the poem itself")
    run: str
    checkpoint: str


class CheckpointInfo(BaseModel):
    name: str
    epoch: int | None
    val_ppl: float | None = Field(description="held-out perplexity after that epoch (lower is better)")
    train_ppl: float | None


class RunInfo(BaseModel):
    name: str
    arch: str
    hidden: int
    layers: int
    vocab_size: int
    start: str = Field(description='a start word the model knows ("love"), or "": its poems begin anywhere')
    lang: str | None = Field(description="the language of the poems it learned from (a BCP 47 tag), if they say")
    default_checkpoint: str
    checkpoints: list[CheckpointInfo]


class Models(BaseModel):
    runs: list[RunInfo]


@dataclass
class ServedRun:
    """A run, what its checkpoints scored, and the models loaded from it so far."""

    run: Run
    info: RunInfo
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    guards: CopyGuards = field(init=False)

    def __post_init__(self) -> None:
        self.guards = CopyGuards(self.run.training_texts, self.run.vocab)

    def model(self, checkpoint: str) -> torch.nn.Module:
        """The model of ``checkpoint``, loaded on first use; concurrent first uses load it once. One that cannot be
        loaded any more because its file is gone leaves the list of checkpoints."""
        with self.lock:
            if checkpoint not in self.models:
                try:
                    self.models[checkpoint], meta = self.run.load_model(checkpoint, device="cpu")
                except NeuraldaError:
                    kept = {*self.run.checkpoints(), *self.models}
                    self.info.checkpoints = [c for c in self.info.checkpoints if c.name in kept]
                    raise
                # A run still training replaces best and last: the list describes the weights written with.
                self.info.checkpoints = [
                    checkpoint_info(c.name, meta, self.run.metrics()) if c.name == checkpoint else c
                    for c in self.info.checkpoints
                ]
            return self.models[checkpoint]


def checkpoint_info(name: str, meta: dict, rows: list[dict]) -> CheckpointInfo:
    """Checkpoint ``name`` with the epoch it holds (from its own header ``meta``: ``best`` and ``last`` are written
    less often than metrics.jsonl grows) and that epoch's perplexities in the run's metrics ``rows`` (none for a
    hand-edited one that is not a number). The held-out one from the header's unrounded loss where it has one: the
    metrics keep 3 decimals, and 138.4504 written as 138.45 reads 138.4 where the report's table says 138.5."""
    epoch = meta.get("epoch")
    row = next((r for r in reversed(rows) if r["epoch"] == epoch), {})  # a repeated epoch: its last row
    loss = _number(meta.get("val_loss"))
    val = perplexity_value(perplexity(loss, 1) if math.isfinite(loss) else row.get("val_ppl"))
    train = perplexity_value(row.get("train_ppl"))
    return CheckpointInfo(
        name=name, epoch=epoch, val_ppl=None if math.isnan(val) else val, train_ppl=None if math.isnan(train) else train
    )


def checkpoint_infos(run: Run) -> list[CheckpointInfo]:
    """Each checkpoint of ``run`` (see ``checkpoint_info``)."""
    rows = run.metrics()  # read once for all
    return [checkpoint_info(name, run.checkpoint_meta(name), rows) for name in run.checkpoints()]


def open_served(path: str) -> ServedRun:
    """Open a run to serve; one with no checkpoint is an error at start, not at the first request."""
    run = Run.open(path)
    checkpoints = checkpoint_infos(run)
    if not checkpoints:
        raise NeuraldaError(f"{run.path}: no checkpoints yet; train it first with `neuralda train`")
    names = [c.name for c in checkpoints]
    info = RunInfo(
        name=run.name,
        arch=run.config["arch"],
        hidden=run.config["hidden"],
        layers=run.config["layers"],
        vocab_size=len(run.vocab),
        start=default_start(run.vocab),
        lang=run.lang,
        default_checkpoint="best" if "best" in names else names[-1],
        checkpoints=checkpoints,
    )
    served = ServedRun(run, info)
    served.model(info.default_checkpoint)  # a damaged checkpoint stops the server at start, with its message
    return served


@dataclass(eq=False)
class _Job:
    seed: int
    gone: threading.Event  # set when no one waits for its poem any more
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this request's thread writes the next batch
    done: bool = False
    result: object = None
    error: BaseException | None = None


class Batcher:
    """Jobs with the same key that wait at the same time are done in one call of ``work(seeds, stop)``.

    No timer: the first job of a key runs at once, alone; jobs that come while it runs wait, and the next batch
    takes them all (up to ``max_batch``). The thread that runs a batch hands the next one to a waiting job's thread
    as soon as its own job is done, so no request waits for work that is not its own for longer than one batch.
    A job whose ``gone`` is set leaves the queue, and ``stop()`` tells a batch that every one of its jobs is gone.
    """

    def __init__(self, max_batch: int = MAX_BATCH, poll: float = 0.05) -> None:
        self.max_batch, self.poll = max_batch, poll
        self.lock = threading.Lock()
        self.waiting: dict[Hashable, list[_Job]] = {}  # a key is here while a batch of it is being done

    def submit(
        self, key: Hashable, seed: int, work: Callable[[Sequence[int], Callable[[], bool]], Sequence],
        gone: threading.Event | None = None,
    ):
        """The result for ``seed``: ``work([..., seed, ...], stop)[its index]``; ``work``'s error is raised here
        too, and ``Stopped`` where ``gone`` was set before its batch began."""
        job = _Job(seed, gone or threading.Event())
        with self.lock:
            if key in self.waiting:
                self.waiting[key].append(job)
            else:
                self.waiting[key] = [job]
                job.lead = True
        while not job.done:
            if not job.lead:
                job.wake.wait(self.poll)  # polled: a job that is gone leaves the queue without waiting its turn
                job.wake.clear()
                with self.lock:
                    queue = self.waiting.get(key, [])
                    if job.gone.is_set() and not job.lead and job in queue:
                        queue.remove(job)  # the batch running now hands over to the next job, or ends the key
                        raise Stopped
                continue
            with self.lock:
                taken = self.waiting[key][: self.max_batch]
                del self.waiting[key][: self.max_batch]
            batch = []
            for j in taken:  # a job whose client has gone answers Stopped; the rest are written
                if j.gone.is_set():
                    j.error, j.done = Stopped(), True
                else:
                    batch.append(j)
            if batch:
                try:
                    results, error = work([j.seed for j in batch], lambda: all(j.gone.is_set() for j in batch)), None
                except BaseException as e:  # every job of the batch answers with it
                    results, error = [None] * len(batch), e
                for j, result in zip(batch, results):
                    j.result, j.error, j.done = result, error, True
            for j in taken:
                if j is not job:
                    j.wake.set()
            with self.lock:
                job.lead = False
                if self.waiting[key]:
                    follower = self.waiting[key][0]
                    if job.done:
                        follower.lead = True
                        follower.wake.set()
                    else:
                        job.lead = True
                else:
                    del self.waiting[key]
        if job.error is not None:
            raise job.error
        return job.result


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before the app reads any of it."""

    def __init__(self, app, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        # Read the whole (small) body here: a chunked body declares no length, so it is counted as it comes.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body, the app only waits for a disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        response = JSONResponse({"detail": f"the request body is over {self.limit:,} bytes"}, status_code=413)
        await response(scope, receive, send)


# The page loads its own script, style and nothing else, and no other site may frame it or learn its address.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """ASGI middleware: every response carries ``SECURITY_HEADERS`` (a second line of defence: the page writes poems
    as text, never as HTML)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _problem(error: dict) -> str:
    """One validation error as a sentence naming the field."""
    where = ".".join(str(p) for p in error["loc"][1:])
    if error["type"] == "json_invalid":
        return f"the body is not valid JSON ({error['ctx']['error']})"
    if not where:
        return 'send a JSON object (Content-Type: application/json) such as {"start": "love", "words": 80}'
    if error["type"] == "extra_forbidden":
        return f"{where}: not a field here (the fields are {', '.join(GenerateRequest.model_fields)})"
    return f"{where}: {error['msg']}"


def allowed_hosts(host: str, address: str) -> list[str]:
    """The names a request may call the server by (its Host header) when it listens on ``host``, bound to
    ``address``: on a loopback address only this machine's (``host`` too, as typed: "127.1"), so that a web page
    whose own name its DNS turns into 127.0.0.1 (DNS rebinding) cannot read the API from the user's browser; any
    name on another address. The address bound decides: "LOCALHOST" and "ip6-localhost" are loopback too."""
    if not ipaddress.ip_address(address).is_loopback:
        return ["*"]
    return sorted({"127.0.0.1", "localhost", "[::1]", url_host(host.lower())})


def url_host(host: str) -> str:
    """``host`` as a URL or a Host header writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


GENERATE_HINT = 'POST a JSON object here, such as {"start": "love", "words": 80}'
OTHER_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Writers:
    """The poems a server is writing, each in a worker thread (writing is CPU-bound: the event loop goes on answering
    other requests): at most ``limit`` asked for at once (more are answered 503), each stopped once its client has
    gone, and all stopped by ``close()``."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self.pending = 0  # asked for and not yet answered; read and written on the event loop only
        self.running: set[threading.Event] = set()  # the ``gone`` of each work in a thread
        self.changed = threading.Condition()
        self.closed = False

    async def write(self, request: Request, work: Callable[[threading.Event], T]) -> T:
        """``work(gone)`` in a worker thread, where ``gone`` is set once the request's client has disconnected
        (asked every ``DISCONNECT_POLL`` seconds) or the request is cancelled (a server stopping, ``SHUTDOWN_GRACE``
        seconds after Ctrl-C): work no one waits for stops there (``Stopped``), and the answer is a 499 no one
        reads, or a 503."""
        if self.pending >= self.limit:
            busy = f"{self.pending} poems are being written; ask again in a moment"
            raise HTTPException(503, busy, {"Retry-After": "1"})
        self.pending += 1
        gone = threading.Event()

        async def watch() -> None:
            try:
                while not await request.is_disconnected():
                    await anyio.sleep(DISCONNECT_POLL)
            finally:
                gone.set()
            tg.cancel_scope.cancel()  # a request still waiting for a worker thread leaves at once

        outcome: tuple[T | None, BaseException | None] = (None, Stopped())
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                outcome = await anyio.to_thread.run_sync(self._attempt, work, gone)
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():  # the server stopping ran out of time for this poem
            raise HTTPException(503, "the server is stopping; ask again once it is back") from None
        finally:
            self.pending -= 1
        result, error = outcome
        if isinstance(error, Stopped):
            raise HTTPException(499, "the client closed the request")
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def _attempt(
        self, work: Callable[[threading.Event], T], gone: threading.Event
    ) -> tuple[T | None, Exception | None]:
        """``work(gone)``'s result or error, in a worker thread (the error is raised outside the task group, where
        it is not grouped)."""
        with self.changed:
            if self.closed:
                return None, Stopped()
            self.running.add(gone)
        try:
            return work(gone), None
        except Exception as e:
            return None, e
        finally:
            with self.changed:
                self.running.discard(gone)
                self.changed.notify_all()

    def close(self, timeout: float = SHUTDOWN_GRACE) -> None:
        """Stop every poem being written and wait (at most ``timeout`` seconds) for their threads to end, so that
        Python does not exit while one is inside torch."""
        with self.changed:
            self.closed = True
            for gone in self.running:
                gone.set()
            self.changed.wait_for(lambda: not self.running, timeout)


def create_app(run_dirs: list[str], hosts: Sequence[str] = ("*",)) -> FastAPI:
    """The web app serving ``run_dirs`` to requests that name one of ``hosts`` (see ``allowed_hosts``); a run that
    cannot be served is a ``NeuraldaError`` now."""
    run_dirs, hosts = listed(run_dirs, "run_dirs"), listed(hosts, "hosts")
    if not run_dirs:
        raise NeuraldaError("serve needs at least one run directory")
    served: dict[str, ServedRun] = {}
    for path in run_dirs:
        s = open_served(path)
        if s.info.name in served:
            raise NeuraldaError(f"two runs are named {s.info.name!r}; serve runs whose folders have different names")
        served[s.info.name] = s
    batcher = Batcher()
    app = FastAPI(
        title="neuralda",
        version=__version__,
        description="Write poems with language models trained on a poet's poems.",
        # FastAPI's /docs and /redoc pages load their scripts from a CDN: blank offline, and the page promises to
        # load nothing from other hosts. The schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)  # checked before the body is read
    app.add_middleware(SecurityHeaders)  # added last, so around both: their refusals carry the headers too

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": "; ".join(_problem(e) for e in exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "There was an error parsing the body": say what a body must be
            return JSONResponse({"detail": UNREADABLE_BODY}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        # Answered by Starlette's outermost middleware, outside SecurityHeaders: the headers are set here. The
        # traceback still goes to the server's log.
        headers = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
        detail = "the server failed on this request (a bug: its log says where)"
        return JSONResponse({"detail": detail}, status_code=500, headers=headers)

    @app.get("/api/models", response_model=Models)
    async def models() -> Models:  # on the event loop: it never waits for a thread busy writing
        """The runs served, with their checkpoints and held-out perplexities."""
        return Models(runs=[s.info for s in served.values()])

    writers = app.state.writers = Writers()

    @app.post(
        "/api/generate",
        response_model=Poem,
        responses={
            404: {"description": "no such run or checkpoint is served"},
            422: {"description": "bad request"},
            503: {"description": "too many poems are being written, or the server is stopping; ask again later"},
        },
    )
    async def generate(req: GenerateRequest, request: Request) -> Poem:
        """Write one poem."""
        return await writers.write(request, lambda gone: write(req, gone))

    def write(req: GenerateRequest, gone: threading.Event) -> Poem:
        """The poem ``req`` asks for, written in a worker thread until its client has ``gone``."""
        name = req.run or next(iter(served))
        if name not in served:
            raise HTTPException(404, f"no run {name!r} is served here; choose one of: {', '.join(served)}")
        s = served[name]
        checkpoint = req.checkpoint or s.info.default_checkpoint
        have = [c.name for c in s.info.checkpoints]
        if checkpoint not in have:
            raise HTTPException(404, f"run {name!r} has no checkpoint {checkpoint!r}; choose one of: {', '.join(have)}")
        if req.top_k > s.info.vocab_size:
            raise HTTPException(422, f"top_k: at most the vocabulary size, {s.info.vocab_size} (0 keeps every token)")
        if req.max_copy == 1:
            raise HTTPException(422, "max_copy: 0 (no guard) or at least 2 words")
        try:
            model = s.model(checkpoint)
        except NeuraldaError as e:  # a damaged checkpoint, or one deleted while served
            have = [c.name for c in s.info.checkpoints]
            if checkpoint not in have:
                raise HTTPException(
                    404, f"run {name!r} has no checkpoint {checkpoint!r} any more (its file is gone); choose one of: "
                    f"{', '.join(have)}"
                ) from None
            raise HTTPException(500, str(e)) from None
        try:
            guard = s.guards.get(req.max_copy)
        except NeuraldaError as e:  # a run shared without data/ writes, but cannot be guarded
            raise HTTPException(422, f"max_copy: this run's training poems cannot be read ({e})") from None
        seed = int.from_bytes(os.urandom(4), "little") if req.seed is None else req.seed
        sampling = SamplingConfig(req.temperature, req.top_k, req.top_p, req.repetition_penalty)
        started = time.perf_counter()
        # Requests that differ only in their seed are written together, where a batch writes each poem as alone.
        key = (name, checkpoint, *req.model_dump(exclude={"seed", "run", "checkpoint"}).values())
        if not batch_invariant(model, torch.device("cpu")):
            key = (*key, object())  # a batch might round this model's poems otherwise: written alone
        try:
            poem, ended = batcher.submit(
                key,
                seed,
                lambda seeds, stop: write_poems(
                    model, s.run.vocab, req.start, req.words, len(seeds), sampling, seeds, req.lines, req.form, guard,
                    stop=stop,
                ),
                gone,
            )
        except NeuraldaError as e:  # a start word the model does not know: the message names close ones
            raise HTTPException(422, str(e)) from None
        ms = (time.perf_counter() - started) * 1000
        words = sum(map(is_word, tokenize(poem, end=False)))
        return Poem(poem=poem, words=words, ms=round(ms, 1), seed=seed, ended=ended, run=name, checkpoint=checkpoint)

    # Any other request under /api/ is answered here, not by the page's files ("use GET or HEAD" to a PUT on
    # /api/generate, and to a POST on a mistyped path).
    allowed = {"/api/models": ("GET", "GET the runs served here"), "/api/generate": ("POST", GENERATE_HINT)}

    @app.api_route("/api/{path:path}", methods=list(OTHER_METHODS), include_in_schema=False)
    async def other_api_requests(request: Request) -> None:
        path = request.url.path
        if path not in allowed:
            raise HTTPException(404, f"no API at {path}; there are {' and '.join(allowed)} (see /openapi.json)")
        method, hint = allowed[path]
        raise HTTPException(405, hint, headers={"Allow": method})

    # Mounted last: the API routes above take precedence; StaticFiles refuses paths outside static/.
    app.mount("/", StaticFiles(packages=[("neuralda", "static")], html=True), name="page")
    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: any free one); a port out of range or in use is a one-line error."""
    if not 0 <= port <= 65535:
        raise NeuraldaError(f"port {port} does not exist; choose a --port from 0 to 65535 (0: any free one)")
    if not host.strip():  # bind("") is every interface: an unset $HOST would open the server to the network
        raise NeuraldaError("--host is empty; give 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it every
    # small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, UnicodeError, TypeError) as e:  # TypeError: a host name that is not UTF-8
        sock.close()
        why = e.strerror if isinstance(e, OSError) else "not a host name"
        raise NeuraldaError(f"cannot listen on {host}:{port} ({why}); choose another --port or --host") from None
    sock.listen(BACKLOG)
    return sock


class TimedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 with bounds on what one connection may hold: its request must arrive (headers and body)
    within ``REQUEST_TIMEOUT`` seconds of the connection or of the answer before (uvicorn limits only the wait between
    requests: a client that sent nothing, or a byte at a time, held its connection for ever); it may send at most
    ``MAX_AHEAD`` bytes ahead of its answers (asking whether its client is still there reads them, and h11 keeps
    them); and at most ``MAX_CONNECTIONS`` are open at once (one more is closed at once)."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arriving = self.loop.call_later(REQUEST_TIMEOUT, self._close)
        if len(self.connections) > MAX_CONNECTIONS:
            self._close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.DONE and len(self.conn.trailing_data[0]) > MAX_AHEAD:
            self._close()  # pipelined requests beyond any browser's while a poem is written: its poem stops too

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # the whole request is in
            self._arriving.cancel()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request is not in yet (or only part of it, pipelined behind the last): its time starts now.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self._arriving.cancel()
            self._arriving = self.loop.call_later(REQUEST_TIMEOUT, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._arriving.cancel()
        super().connection_lost(exc)

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def uvicorn_server(app: FastAPI) -> uvicorn.Server:
    """The uvicorn server ``serve`` runs ``app`` with: connections bounded in time, size and number
    (``TimedProtocol``); once told to stop (Ctrl-C), the poems being written have ``SHUTDOWN_GRACE`` seconds."""
    config = uvicorn.Config(
        app,
        http=TimedProtocol,
        lifespan="off",  # the app has no start-up or shut-down steps (with them, a second Ctrl-C printed a traceback)
        log_level="warning",
        backlog=BACKLOG,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    return uvicorn.Server(config)


def serve(run_dirs: list[str], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the page and the API for ``run_dirs`` on ``host:port`` until interrupted."""
    sock = listen(host, port)
    try:
        app = create_app(run_dirs, allowed_hosts(host, sock.getsockname()[0]))
    except BaseException:
        sock.close()
        raise
    print(f"neuralda: writing poems at http://{url_host(host)}:{sock.getsockname()[1]}/ (Ctrl-C stops)", flush=True)
    try:
        uvicorn_server(app).run(sockets=[sock])
    finally:
        app.state.writers.close()
