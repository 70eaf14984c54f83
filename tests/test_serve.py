"""The web API on a real loopback server: valid, invalid and concurrent requests, limits, and no way out of the runs."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from neuralda.errors import NeuraldaError
from neuralda.generate import CopyGuard, SamplingConfig, Stopped, write_poems
from neuralda.run import Run
from neuralda.serve import MAX_BODY, Batcher, allowed_hosts, create_app, listen, uvicorn_server
from neuralda.train import TrainConfig, train

LOVE_LINES = [
    "love is a lamp left burning in the hall",
    "love, the orchard answers, love again",
    "we loved the rain before we learned its weight",
    "my lover sleeps beneath the walnut tree",
]
LINES = [
    "the river keeps the names we gave the stones",
    "a glove lies open on the kitchen chair",
    "the morning folds its linen on the hill",
    "i carry salt and honey in my hands",
    "your voice returns the way the swallows do",
    "the lonely clock is counting out the snow",
    "and every door we open lets in light",
    "the sea forgets, the sea remembers us",
]


def tiny_corpus(path: Path) -> Path:
    """Thirty short poems of two stanzas, each with "love" in it."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(30):
            first = [LOVE_LINES[i % 4], LINES[i % 8], LINES[(i + 3) % 8]]
            second = [LINES[(i + 5) % 8], LOVE_LINES[(i + 1) % 4]]
            text = "\n".join(first) + "\n\n" + "\n".join(second)
            f.write(json.dumps({"title": f"Poem {i}", "author": "a test", "text": text}) + "\n")
    return path


def tiny_run(folder: Path) -> Path:
    """A two-epoch run with checkpoints best, last and epoch-1 (a few seconds on a CPU)."""
    cfg = TrainConfig(
        corpus=str(tiny_corpus(folder / "corpus.jsonl")),
        output=str(folder / "tiny"),
        epochs=2,
        save_at=(1,),
        hidden=32,
        layers=1,
        batch_size=8,
        seq_len=16,
        device="cpu",
        progress=False,
    )
    return train(cfg, log=lambda _: None).run


class LiveServer:
    """The app on a free loopback port in a background thread, as ``neuralda serve`` runs it."""

    def __init__(self, run_dirs: list[str]) -> None:
        sock = listen("127.0.0.1", 0)
        self.address = sock.getsockname()
        self.url = f"http://127.0.0.1:{self.address[1]}"
        self.app = create_app(run_dirs)
        self.server = uvicorn_server(self.app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            self.thread.join(0.01)
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.writers.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """The tiny run and a copy of it under another name (two runs served side by side), whose poems say they are
    Spanish."""
    folder = tmp_path_factory.mktemp("serve")
    tiny = tiny_run(folder)
    other = folder / "other"
    shutil.copytree(tiny, other)
    train = other / "data" / "train.jsonl"
    rows = [{**json.loads(line), "lang": "es"} for line in train.read_text(encoding="utf-8").splitlines()]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return [tiny, other]


@pytest.fixture(scope="module")
def server(runs):
    with LiveServer([str(r) for r in runs]) as live:
        yield live


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def write(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/api/generate", json=body)


def test_a_poet_without_love_begins_anywhere_not_with_its_commonest_word(runs, tmp_path):
    """A Spanish poet's page offered "el" (its commonest word), and every poem from an empty box began with it."""
    from neuralda.serve import open_served

    run = shutil.copytree(runs[0], tmp_path / "poeta")
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    vocab["tokens"] = ["amor" if t == "love" else t for t in vocab["tokens"]]
    (run / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    assert open_served(str(run)).info.start == ""


def test_models_lists_runs_checkpoints_and_perplexity(client, runs):
    r = client.get("/api/models")
    assert r.status_code == 200
    tiny, other = r.json()["runs"]
    assert (tiny["name"], other["name"]) == ("tiny", "other")
    assert tiny["vocab_size"] == len(Run.open(runs[0]).vocab)
    assert tiny["start"] == "love" and tiny["default_checkpoint"] == "best"
    assert (tiny["lang"], other["lang"]) == (None, "es")  # the language its training poems give, for the page
    checkpoints = {c["name"]: c for c in tiny["checkpoints"]}
    assert set(checkpoints) == {"best", "last", "epoch-1"}
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert checkpoints["last"]["epoch"] == 2 and checkpoints["last"]["val_ppl"] == pytest.approx(rows[-1]["val_ppl"], abs=5e-4)
    assert checkpoints["epoch-1"]["val_ppl"] == pytest.approx(rows[0]["val_ppl"], abs=5e-4) and rows[0]["val_ppl"] > 1


def test_models_read_each_checkpoint_s_epoch_from_the_checkpoint(runs, tmp_path):
    """best and last are written every 30 s while metrics.jsonl grows every epoch: a run still training, or killed,
    has rows for epochs its checkpoints do not hold."""
    from neuralda.serve import checkpoint_infos

    run = tmp_path / "behind"
    shutil.copytree(runs[0], run)
    for name in ("best", "last"):
        shutil.copy(run / "checkpoints" / "epoch-1.safetensors", run / "checkpoints" / f"{name}.safetensors")
    rows = Run.open(run).metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    for info in checkpoint_infos(Run.open(run)):
        assert (info.epoch, info.train_ppl) == (1, rows[0]["train_ppl"])
        assert info.val_ppl == pytest.approx(rows[0]["val_ppl"], abs=5e-4)  # unrounded, from the checkpoint


def test_an_epoch_logged_twice_is_shown_with_its_last_row(runs, tmp_path):
    """A hand-edited or merged metrics.jsonl may log an epoch twice: the later row is the one that happened last."""
    from neuralda.serve import checkpoint_infos

    run = shutil.copytree(runs[0], tmp_path / "twice")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stale = {**rows[0], "val_ppl": 9999.0, "train_ppl": 9999.0}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [stale, *rows]))
    infos = {c.name: c for c in checkpoint_infos(Run.open(run))}
    assert infos["epoch-1"].train_ppl == rows[0]["train_ppl"]
    assert infos["epoch-1"].val_ppl == pytest.approx(rows[0]["val_ppl"], abs=5e-4)


def test_a_hand_edited_perplexity_is_shown_as_none_not_a_crash_at_start(runs, tmp_path):
    """metrics.jsonl is the user's to edit: a perplexity that is a string, true or a list stopped `serve` with a
    pydantic traceback, and true was shown as a perplexity of 1.0."""
    from neuralda.serve import open_served

    run = shutil.copytree(runs[0], tmp_path / "edited")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row, odd in zip(rows, ("12.5", [3])):
        row["val_ppl"], row["train_ppl"] = odd, True
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    infos = {c.name: c for c in open_served(str(run)).info.checkpoints}
    assert [infos[n].train_ppl for n in ("epoch-1", "last")] == [None, None]
    assert all(infos[n].val_ppl > 1 for n in ("epoch-1", "last"))  # the checkpoint's own, not the edited line's


def test_the_page_shows_the_held_out_perplexity_the_report_s_table_does(runs, tmp_path):
    """metrics.jsonl keeps 3 decimals: 138.4504 logged as 138.45 would read 138.4 where the table says 138.5."""
    from neuralda.evaluate import format_ppl
    from neuralda.serve import checkpoint_info

    rows = [{"epoch": 2, "val_ppl": 138.45, "train_ppl": 90.0}]
    info = checkpoint_info("best", {"epoch": 2, "val_loss": math.log(138.4504)}, rows)
    assert format_ppl(info.val_ppl) == format_ppl(138.4504) == "138.5"
    old = checkpoint_info("best", {"epoch": 2}, rows)  # a header without the loss: the metrics' number
    assert old.val_ppl == 138.45 and old.train_ppl == 90.0


def test_a_run_whose_training_poems_cannot_be_read_is_still_served(runs, tmp_path):
    """The poems' language is only a mark on the page: a damaged or missing data/train.jsonl stopped `serve` at
    start, though writing needs no training poem (only --max-copy reads them, and names the file then)."""
    from neuralda.serve import open_served

    run = shutil.copytree(runs[0], tmp_path / "torn")
    train = run / "data" / "train.jsonl"
    train.write_bytes(train.read_bytes()[:40])  # a copy cut short
    assert open_served(str(run)).info.lang is None
    train.unlink()
    assert open_served(str(run)).info.lang is None


def test_a_checkpoint_replaced_while_served_is_listed_as_the_weights_written_with(runs, tmp_path):
    """A run resumed while served replaces last: a poem from it came from the new weights while the list (and the
    page) still gave the epoch and perplexity of those there at start."""
    run = shutil.copytree(runs[0], tmp_path / "training")
    with LiveServer([str(run)]) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert {x["name"]: x["epoch"] for x in c.get("/api/models").json()["runs"][0]["checkpoints"]}["last"] == 2
        shutil.copy(run / "checkpoints" / "epoch-1.safetensors", run / "checkpoints" / "last.safetensors")
        assert write(c, words=10, seed=1, checkpoint="last").status_code == 200
        listed = {x["name"]: x for x in c.get("/api/models").json()["runs"][0]["checkpoints"]}
    rows = Run.open(run).metrics()
    assert listed["last"]["epoch"] == 1 and listed["last"]["val_ppl"] == pytest.approx(rows[0]["val_ppl"], abs=5e-4)
    assert listed["best"]["epoch"] == 2 and listed["best"]["val_ppl"] == pytest.approx(rows[1]["val_ppl"], abs=5e-4)


def test_a_run_with_a_long_folder_name_can_be_named(runs, tmp_path):
    """A folder name may be 255 bytes long; the page names the run in every request, and past 200 characters each
    was a 422."""
    run = shutil.copytree(runs[0], tmp_path / ("r" * 255))
    with LiveServer([str(run)]) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        r = write(c, words=5, seed=1, run=run.name)
    assert r.status_code == 200, r.text


def test_generate_writes_the_poem_write_poems_writes(client, runs):
    r = write(client, start="Love", words=40, seed=7, temperature=0.8, top_p=0.9, top_k=50)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["poem"].startswith("love") and 1 <= body["words"] <= 40
    assert body["seed"] == 7 and body["run"] == "tiny" and body["checkpoint"] == "best" and body["ms"] > 0
    run = Run.open(runs[0])
    model, _ = run.load_model("best")
    expected = write_poems(model, run.vocab, "Love", 40, 1, SamplingConfig(0.8, 50, 0.9), 7)[0][0]
    assert body["poem"] == expected


def test_every_writing_option_of_generate_is_in_the_api(client, runs):
    """Repetition penalty, lines, form and the copy guard, as `neuralda generate` takes them."""
    options = {"repetition_penalty": 1.5, "lines": 7, "form": "couplet", "max_copy": 3}
    run = Run.open(runs[0])
    model, _ = run.load_model("best")
    guard = CopyGuard.build(run.training_texts(), run.vocab, 3)
    for seed in range(4):
        body = write(client, start="love", words=80, temperature=1.3, seed=seed, **options).json()
        expected = write_poems(
            model, run.vocab, "love", 80, 1, SamplingConfig(1.3, 0, 0.95, 1.5), seed, 7, "couplet", guard
        )[0][0]
        assert body["poem"] == expected
        stanzas = body["poem"].split("\n\n")
        assert all(len(s.split("\n")) == 2 for s in stanzas[:-1]) and body["poem"].count("\n") - len(stanzas) < 7


def test_a_run_served_without_its_training_poems_writes_but_cannot_guard(tmp_path, runs):
    shared = tmp_path / "shared"
    shutil.copytree(runs[0], shared, ignore=shutil.ignore_patterns("data"))
    with LiveServer([str(shared)]) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert write(c, words=20, seed=1).status_code == 200
        r = write(c, words=20, seed=1, max_copy=4)
        assert r.status_code == 422 and r.json()["detail"].startswith("max_copy:") and "train.jsonl" in r.json()["detail"]


def test_without_a_start_a_model_that_lacks_love_begins_anywhere(tmp_path):
    corpus = tmp_path / "no-love.jsonl"
    corpus.write_text("".join(json.dumps({"text": "\n".join(LINES[i % 8 :][:4])}) + "\n" for i in range(30)))
    cfg = TrainConfig(corpus=str(corpus), output=str(tmp_path / "run"), epochs=1, hidden=16, layers=1, batch_size=8,
                      device="cpu", progress=False)
    run = Run.open(train(cfg, log=lambda _: None).run)
    with LiveServer([str(run.path)]) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        r = write(c, words=12, seed=4)
        assert r.status_code == 200, r.text
    model, _ = run.load_model("best")
    assert "love" not in run.vocab and r.json()["poem"] == write_poems(model, run.vocab, "", 12, 1, seed=4)[0][0]


def test_run_and_checkpoint_are_chosen_by_name(client):
    a = write(client, seed=3, words=30, run="other", checkpoint="epoch-1").json()
    assert (a["run"], a["checkpoint"]) == ("other", "epoch-1")
    assert write(client, seed=3, words=30, run="tiny", checkpoint="epoch-1").json()["poem"] == a["poem"]


def test_without_a_seed_each_poem_tells_its_seed(client):
    first = write(client, words=30).json()
    again = write(client, words=30, seed=first["seed"]).json()
    assert again["poem"] == first["poem"]
    assert len({write(client, words=30).json()["seed"] for _ in range(3)}) > 1  # a random one each time


def test_the_words_of_a_poem_are_counted_without_its_marks_and_line_breaks(client):
    for seed in range(3):
        body = write(client, words=40, seed=seed).json()
        assert body["words"] == len(re.findall(r"\w+(?:['’-]\w+)*", body["poem"]))


def test_concurrent_requests_equal_the_same_requests_alone(client):
    # Only requests that differ in nothing but their seed may share a batch.
    forms = [{}, {"form": "tercet"}, {"max_copy": 3}, {"lines": 3}, {"repetition_penalty": 2.0}]
    bodies = [{"start": "love", "words": 60, "seed": s, "temperature": 1.2, **forms[s % 5]} for s in range(16)]
    alone = [write(client, **b).json()["poem"] for b in bodies]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: write(client, **b), bodies))
    assert [r.status_code for r in together] == [200] * 16
    assert [r.json()["poem"] for r in together] == alone
    assert len(set(alone)) > 1


def test_requests_for_another_run_checkpoint_or_start_are_never_written_in_one_batch(runs, tmp_path, monkeypatch):
    import neuralda.serve

    early = shutil.copytree(runs[0], tmp_path / "early")  # other weights: its best is its first epoch
    shutil.copy(early / "checkpoints" / "epoch-1.safetensors", early / "checkpoints" / "best.safetensors")

    def slow(*args, **kwargs):
        time.sleep(0.5)  # the requests that come meanwhile wait for the next batch
        return write_poems(*args, **kwargs)

    first = {"run": "tiny", "checkpoint": "best", "start": "love", "words": 30, "seed": 9}
    # Each differs from the first in one of run, checkpoint and start only; all wait behind one like the first.
    kinds = [("tiny", "best", "love"), ("tiny", "best", "the"), ("tiny", "epoch-1", "love"), ("early", "best", "love")]
    bodies = [{"run": r, "checkpoint": c, "start": s, "words": 30, "seed": 5} for r, c, s in kinds]
    with LiveServer([str(runs[0]), str(early)]) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        alone = [write(c, **b).json()["poem"] for b in bodies]
        monkeypatch.setattr(neuralda.serve, "write_poems", slow)
        with ThreadPoolExecutor(5) as pool:
            running = pool.submit(write, c, **first)
            time.sleep(0.2)  # the others wait for it, then go in batches with whichever match
            together = list(pool.map(lambda b: write(c, **b).json()["poem"], bodies))
            assert running.result().status_code == 200
    assert alone[0] not in alone[1:] and together == alone


def test_batcher_writes_waiting_jobs_together_and_answers_each_its_own():
    calls: list[list[int]] = []
    running = threading.Event()

    def work(seeds, stop):
        calls.append(list(seeds))
        running.set()
        time.sleep(0.2)  # jobs that come meanwhile wait for the next batch
        if 13 in seeds:
            raise NeuraldaError("unlucky")
        return [f"poem {s}" for s in seeds]

    batcher = Batcher(max_batch=4)
    with ThreadPoolExecutor(12) as pool:
        first = pool.submit(batcher.submit, "key", 0, work)
        running.wait()
        rest = [pool.submit(batcher.submit, "key", s, work) for s in range(1, 10)]
        other = pool.submit(batcher.submit, "other key", 99, work)
        assert first.result() == "poem 0" and [f.result() for f in rest] == [f"poem {s}" for s in range(1, 10)]
        assert other.result() == "poem 99"
        assert sorted(len(c) for c in calls) == [1, 1, 1, 4, 4]  # 0 alone, 99 alone, then 1-9 in batches of 4, 4, 1
        running.clear()
        alone = pool.submit(batcher.submit, "key", 11, work)
        running.wait()
        failed = [pool.submit(batcher.submit, "key", s, work) for s in (12, 13)]  # one batch: both get its error
        assert alone.result() == "poem 11"
        for f in failed:
            with pytest.raises(NeuraldaError, match="unlucky"):
                f.result()
    assert batcher.waiting == {}


def test_a_job_whose_client_has_gone_leaves_the_queue_and_a_batch_all_gone_is_told_to_stop():
    release, entered, stops = threading.Event(), threading.Event(), []

    def work(seeds, stop):
        entered.set()
        while not (release.is_set() or stop()):
            time.sleep(0.005)
        stops.append(stop())
        if stop():
            raise Stopped
        return [f"poem {s}" for s in seeds]

    batcher = Batcher(max_batch=4, poll=0.01)
    gone = [threading.Event() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, "key", 0, work, gone[0])
        assert entered.wait(5)
        waiting = [pool.submit(batcher.submit, "key", s, work, gone[s]) for s in (1, 2, 3)]
        time.sleep(0.1)
        gone[1].set()
        with pytest.raises(Stopped):  # without waiting for the batch before it
            waiting[0].result(timeout=2)
        assert [j.seed for j in batcher.waiting["key"]] == [2, 3] and not first.done()
        gone[0].set()  # every client of the running batch has gone: it is told to stop
        with pytest.raises(Stopped):
            first.result(timeout=2)
        release.set()
        assert [f.result(timeout=5) for f in waiting[1:]] == ["poem 2", "poem 3"]
    assert stops == [True, False] and batcher.waiting == {}


def post_and_leave_open(address: tuple, body: dict) -> socket.socket:
    """A connection that has sent a generate request and reads nothing."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(address)
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def endless_when_cold(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """``write_poems`` made to write for ever at temperature 0.5 (until told to stop): the events of such writing
    begun and stopped."""
    import neuralda.serve

    begun, stopped = threading.Event(), threading.Event()

    def writer(model, vocab, start, words, n, sampling, *rest, stop=None, **kwargs):
        if sampling.temperature != 0.5:
            return write_poems(model, vocab, start, words, n, sampling, *rest, stop=stop, **kwargs)
        begun.set()
        while not stop():
            time.sleep(0.01)
        stopped.set()
        raise Stopped

    monkeypatch.setattr(neuralda.serve, "write_poems", writer)
    return begun, stopped


def test_poems_whose_clients_have_left_stop_and_hold_up_no_one(runs, monkeypatch):
    """More requests than worker threads, all abandoned: their writing stops, and the next request is answered."""
    begun, stopped = endless_when_cold(monkeypatch)
    with LiveServer([str(runs[0])]) as live, httpx.Client(base_url=live.url, timeout=20) as c:
        left = [post_and_leave_open(live.address, {"words": 500, "temperature": 0.5, "seed": s}) for s in range(60)]
        assert begun.wait(10)
        time.sleep(0.5)
        for sock in left:
            sock.close()
        assert stopped.wait(5)
        assert write(c, words=5, seed=1).status_code == 200
        deadline = time.perf_counter() + 5
        while live.app.state.writers.pending and time.perf_counter() < deadline:  # each notices its client has gone
            time.sleep(0.05)
        assert live.app.state.writers.pending == 0


def test_more_poems_at_once_than_the_server_takes_are_503_with_when_to_ask_again(runs, monkeypatch):
    begun, _ = endless_when_cold(monkeypatch)
    with LiveServer([str(runs[0])]) as live, httpx.Client(base_url=live.url, timeout=20) as c:
        live.app.state.writers.limit = 2
        held = [post_and_leave_open(live.address, {"words": 50, "temperature": 0.5}) for _ in range(2)]
        assert begun.wait(10)
        r = write(c, words=5)
        for sock in held:
            sock.close()
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "ask again" in r.json()["detail"]


def test_a_server_told_to_stop_finishes_short_poems_and_stops_the_rest_with_503(runs, monkeypatch):
    import neuralda.serve

    begun, stopped = endless_when_cold(monkeypatch)
    monkeypatch.setattr(neuralda.serve, "SHUTDOWN_GRACE", 1)
    with ThreadPoolExecutor(2) as pool:
        with LiveServer([str(runs[0])]) as live:
            c = httpx.Client(base_url=live.url, timeout=20)
            endless = pool.submit(write, c, words=50, temperature=0.5)
            assert begun.wait(10)
            short = pool.submit(write, c, words=50, temperature=0.9)
            time.sleep(0.2)
            t0 = time.perf_counter()
            live.server.should_exit = True  # Ctrl-C
            live.thread.join(10)
            assert time.perf_counter() - t0 < 5 and not live.thread.is_alive()
        assert short.result().status_code == 200
        assert endless.result().status_code == 503 and "stopping" in endless.result().json()["detail"]
    assert stopped.is_set()


def test_connections_that_are_slow_to_send_their_request_are_closed(runs, monkeypatch):
    import neuralda.serve

    monkeypatch.setattr(neuralda.serve, "REQUEST_TIMEOUT", 0.5)

    def trickled_until_closed(sock: socket.socket, data: bytes) -> bool:  # a byte every 0.05 s
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return True
            if closed_within(sock, 0.05):
                return True
        return False

    with LiveServer([str(runs[0])]) as live:
        assert closed_within(socket.create_connection(live.address), 3)  # silent
        headers = b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"." * 200
        assert trickled_until_closed(socket.create_connection(live.address), headers)
        body = socket.create_connection(live.address)
        body.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        assert closed_within(body, 3)
        with httpx.Client(base_url=live.url, timeout=20) as c:  # a client that sends in time is answered
            assert [write(c, words=5, seed=s).status_code for s in range(3)] == [200] * 3
            time.sleep(0.7)  # its connection idles past the limit and is opened again
            assert write(c, words=5, seed=4).status_code == 200


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (what it answers before is read and dropped)."""
    sock.settimeout(0.05)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except ConnectionError:
            return True
    return False


def test_a_half_request_pipelined_behind_an_answered_one_is_timed_too(runs, monkeypatch):
    import neuralda.serve

    monkeypatch.setattr(neuralda.serve, "REQUEST_TIMEOUT", 0.5)
    with LiveServer([str(runs[0])]) as live:
        sock = post_and_leave_open(live.address, {"words": 5})
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        assert closed_within(sock, 3)


def test_a_connection_sending_far_ahead_of_its_answer_is_closed_and_its_poem_stops(runs, monkeypatch):
    # Asking whether a client is still there reads what it sent: pipelined bytes piled up in h11 (2.5 MB/s).
    import neuralda.serve

    begun, stopped = endless_when_cold(monkeypatch)
    monkeypatch.setattr(neuralda.serve, "MAX_AHEAD", 8 * 1024)
    with LiveServer([str(runs[0])]) as live:
        sock = post_and_leave_open(live.address, {"words": 50, "temperature": 0.5})
        assert begun.wait(10)
        sock.settimeout(5)
        try:
            for _ in range(200):  # 200 KB of pipelined requests
                sock.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"." * 1000 + b"\r\n\r\n")
                time.sleep(0.005)
        except OSError:
            pass  # closed under it
        assert closed_within(sock, 3) and stopped.wait(5)


def test_connections_over_the_limit_are_closed_at_once(runs, monkeypatch):
    import neuralda.serve

    monkeypatch.setattr(neuralda.serve, "MAX_CONNECTIONS", 3)
    with LiveServer([str(runs[0])]) as live:
        held = [socket.create_connection(live.address) for _ in range(3)]
        time.sleep(0.2)
        extra = socket.create_connection(live.address)
        assert closed_within(extra, 2) and not closed_within(held[0], 0.3)
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with httpx.Client(base_url=live.url, timeout=20) as c:
            assert write(c, words=5).status_code == 200


@pytest.mark.parametrize("invariant", [True, False], ids=["cpu", "a batch that may round otherwise"])
def test_a_transformer_is_batched_only_where_a_batch_writes_each_poem_as_alone(tmp_path, monkeypatch, invariant):
    """On the CPU its packed steps give a row the bits it gets alone; where a batch may round otherwise (the model's
    own step rounded a batch of 32 otherwise than one row, which changed 2 of 32 poems), each request is alone."""
    import neuralda.serve

    if not invariant:
        monkeypatch.setattr(neuralda.serve, "batch_invariant", lambda *a: False)

    cfg = TrainConfig(corpus=str(tiny_corpus(tmp_path / "c.jsonl")), output=str(tmp_path / "gpt"), arch="gpt", epochs=1,
                      hidden=32, layers=1, batch_size=8, seq_len=16, device="cpu", progress=False)
    run = train(cfg, log=lambda _: None).run
    sizes = []

    def recorded(model, vocab, start, words, n, *rest, **kwargs):
        sizes.append(n)
        time.sleep(0.2)  # the requests that come meanwhile would join the next batch
        return write_poems(model, vocab, start, words, n, *rest, **kwargs)

    monkeypatch.setattr(neuralda.serve, "write_poems", recorded)
    with LiveServer([str(run)]) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda seed: write(c, words=20, seed=seed), range(6)))
    assert [r.status_code for r in answers] == [200] * 6 and sum(sizes) == 6
    assert (max(sizes) > 1) is invariant


def test_a_slow_poem_holds_up_no_other_request(client, monkeypatch):
    import neuralda.serve

    def slow_when_cold(model, vocab, start, words, n, sampling, seeds, *shape, **kwargs):
        if sampling.temperature == 0.5:
            time.sleep(1.5)
        return write_poems(model, vocab, start, words, n, sampling, seeds, *shape, **kwargs)

    monkeypatch.setattr(neuralda.serve, "write_poems", slow_when_cold)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(write, client, words=20, temperature=0.5, seed=1)
        time.sleep(0.3)
        t0 = time.perf_counter()
        assert client.get("/api/models").status_code == 200
        assert write(client, words=20, temperature=0.9, seed=2).status_code == 200
        assert time.perf_counter() - t0 < 1.0 and not slow.done()
        assert slow.result().status_code == 200


def test_a_damaged_checkpoint_asked_for_is_an_error_that_says_so(runs, tmp_path):
    run = shutil.copytree(runs[0], tmp_path / "damaged")
    epoch = run / "checkpoints" / "epoch-1.safetensors"
    epoch.write_bytes(epoch.read_bytes()[:-100])
    with LiveServer([str(run)]) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        r = write(c, words=5, checkpoint="epoch-1")
    assert r.status_code == 500 and "epoch-1" in r.json()["detail"]


def test_a_checkpoint_deleted_while_served_is_not_found_and_no_longer_listed(runs, tmp_path):
    run = shutil.copytree(runs[0], tmp_path / "pruned")
    with LiveServer([str(run)]) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        (run / "checkpoints" / "epoch-1.safetensors").unlink()
        r = write(c, words=5, checkpoint="epoch-1")
        listed = [k["name"] for k in c.get("/api/models").json()["runs"][0]["checkpoints"]]
        assert write(c, words=5, checkpoint="best").status_code == 200  # loaded at start: still served
    assert r.status_code == 404 and "no checkpoint 'epoch-1' any more" in r.json()["detail"]
    assert "epoch-1" not in listed and "best" in listed


def test_the_longest_poem_asked_for_is_bounded(client):
    r = write(client, words=500, seed=3)
    assert r.status_code == 200 and r.json()["words"] <= 500


def rss_mb() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc (Linux)")
def test_a_bounded_load_gives_no_error_and_no_memory_growth(client):
    bodies = [{"words": 40, "seed": s, "temperature": 0.7 + (s % 3) / 10} for s in range(480)]
    with ThreadPoolExecutor(8) as pool:
        warm = list(pool.map(lambda b: write(client, **b).status_code, bodies[:160]))
        before = rss_mb()
        rest = list(pool.map(lambda b: write(client, **b).status_code, bodies[160:]))
    grown = rss_mb() - before
    assert warm + rest == [200] * len(bodies)
    assert grown < 10, f"resident memory grew by {grown:.1f} MB over {len(rest)} requests"


def test_unknown_start_word_names_close_words(client):
    r = write(client, start="lovv")
    assert r.status_code == 422
    assert "'lovv'" in r.json()["detail"] and "love" in r.json()["detail"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"words": 0}, "words"),
        ({"words": 501}, "words"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": 1e-300}, "temperature"),
        ({"temperature": 5.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 100_000}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),  # a poem's generator takes seeds below 2**63: this one wrote seed 0's poem
        ({"words": "many"}, "words"),
        ({"words": "12"}, "words"),
        ({"words": 1.5}, "words"),
        ({"temperature": True}, "temperature"),
        ({"start": ["love"]}, "start"),
        ({"start": "love " * 50}, "start"),
        ({"temprature": 1.0}, "temprature"),
        ({"repetition_penalty": 0.5}, "repetition_penalty"),
        ({"repetition_penalty": 11}, "repetition_penalty"),
        ({"lines": -1}, "lines"),
        ({"lines": 101}, "lines"),
        ({"form": "sonnet"}, "form"),
        ({"form": 4}, "form"),
        ({"max_copy": 1}, "max_copy"),
        ({"max_copy": 13}, "max_copy"),
    ],
)
def test_bad_numbers_and_types_are_422_naming_the_field(client, body, field):
    r = write(client, **body)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(f"{field}:")


@pytest.mark.parametrize("max_copy", [1, -1])
def test_a_copy_guard_of_no_length_says_what_it_may_be(client, max_copy):
    # Not "this run's training poems cannot be read", which sent the user looking for a file that is there.
    r = write(client, max_copy=max_copy)
    assert r.status_code == 422 and r.json()["detail"].startswith("max_copy:")
    assert "training poems" not in r.json()["detail"]


def test_a_misspelt_field_is_named_with_the_fields_there_are(client):
    r = write(client, temprature=0.8)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("temprature: not a field here") and "temperature" in r.json()["detail"]


def test_bodies_that_are_not_a_json_object_say_what_to_send(client):
    r = client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = client.post("/api/generate", json=["love"])
    assert r.status_code == 422 and "JSON object" in r.json()["detail"]


@pytest.mark.parametrize(
    "body", [b'{"seed": ' + b"1" * 5000 + b"}", b"[" * 8000 + b"]" * 8000, '{"start": "niño"}'.encode("latin-1")],
    ids=["a number of 5,000 digits", "nested 8,000 deep", "latin-1"],
)
def test_bodies_json_cannot_read_say_what_a_body_must_be(client, body):
    r = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]


def test_oversized_bodies_are_413(client):
    big = {"start": "love", "padding": "x" * MAX_BODY}
    assert write(client, **big).status_code == 413

    def chunks():  # no content-length: the body is counted as it arrives
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    r = client.post("/api/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "16,384 bytes" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"run": "../tiny"},
        {"run": "/etc"},
        {"run": "tiny", "checkpoint": "../../tiny/checkpoints/best"},
        {"run": "tiny", "checkpoint": "best.safetensors"},
        {"run": "tiny", "checkpoint": "epoch-2"},
        {"run": "nope"},
    ],
)
def test_only_served_runs_and_checkpoints_can_be_named(client, body):
    r = write(client, **body)
    assert r.status_code == 404
    assert "choose one of" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/../config.json", "/%2e%2e/%2e%2e/run.py", "/..%2fserve.py", "/static/../serve.py"])
def test_the_page_serves_nothing_outside_its_folder(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "create_app" not in r.text


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_the_api_by_another_method_says_to_post_not_that_it_is_missing(client, method):
    answer = client.request(method, "/api/generate")  # GET: a browser's address bar, a plain curl
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert "POST a JSON object here" in answer.json()["detail"]
    answer = client.request(method, "/api/models")
    if method == "GET":
        assert answer.status_code == 200
    else:
        assert answer.status_code == 405 and answer.headers["allow"] == "GET"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_mistyped_api_path_is_not_found_whatever_the_method(client, method):
    answer = client.request(method, "/api/generat", json={"start": "love"})
    assert answer.status_code == 404 and "no API at /api/generat" in answer.json()["detail"]


def test_the_page_and_openapi_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="app.js"' in page.text
    assert client.get("/app.js").status_code == 200 and client.get("/style.css").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/generate", "/api/models"} <= set(spec["paths"])
    assert spec["components"]["schemas"]["GenerateRequest"]["properties"]["words"]["maximum"] == 500
    for page in ("/docs", "/redoc"):  # their scripts would come from a CDN: not offline, not from this host
        assert "cdn." not in client.get(page).text


def test_small_responses_do_not_wait_for_a_delayed_ack(client):
    # Without TCP_NODELAY each response waited ~40 ms for the client's delayed ACK; on loopback it takes ~1 ms.
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        client.get("/api/models")
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.02


def test_a_run_that_cannot_be_served_is_an_error_at_start(tmp_path, runs):
    with pytest.raises(NeuraldaError, match="serve needs at least one run directory"):
        create_app([])
    damaged = shutil.copytree(runs[0], tmp_path / "damaged")
    best = damaged / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:-100])  # a copy cut short: said at start, not at the first request
    with pytest.raises(NeuraldaError, match="best"):
        create_app([str(damaged)])
    with pytest.raises(NeuraldaError, match="no such run directory"):
        create_app([str(tmp_path / "missing")])
    with pytest.raises(NeuraldaError, match="two runs are named"):
        create_app([str(runs[0]), str(runs[0])])


def test_a_port_in_use_is_a_one_line_error(server):
    port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(NeuraldaError, match="choose another --port"):
        listen("127.0.0.1", port)


@pytest.mark.parametrize("port", [-1, 65536, 99999])
def test_a_port_out_of_range_is_a_one_line_error(port):
    with pytest.raises(NeuraldaError, match=f"port {port} does not exist; choose a --port from 0 to 65535"):
        listen("127.0.0.1", port)


@pytest.mark.parametrize("host", ["", " "])
def test_an_empty_host_is_an_error_not_every_interface(host):
    # bind(("", port)) listens on 0.0.0.0: `--host "$HOST"` with HOST unset opened the server to the network.
    with pytest.raises(NeuraldaError, match="--host is empty"):
        listen(host, 0).close()


def test_serve_listens_on_this_machine_only_unless_told_otherwise(runs, monkeypatch, capsys):
    from neuralda.cli import main
    from neuralda.serve import serve

    addresses = []

    def run(server, sockets):
        addresses.append(sockets[0].getsockname()[0])
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve([str(runs[0])], port=0)
    assert main(["serve", str(runs[0]), "--port", "0"]) == 0
    assert addresses == ["127.0.0.1", "127.0.0.1"]
    assert "http://127.0.0.1:" in capsys.readouterr().out


def test_serve_on_a_port_out_of_range_exits_2_with_one_line(runs):
    out = subprocess.run([sys.executable, "-m", "neuralda", "serve", str(runs[0]), "--port", "99999"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "port 99999 does not exist" in out.stderr


def test_on_loopback_only_this_machine_s_names_are_answered(runs):
    # DNS rebinding: a page at attacker.example whose name now resolves to 127.0.0.1 is same-origin with the API
    # unless the server refuses requests that call it attacker.example.
    proc = subprocess.Popen([sys.executable, "-m", "neuralda", "serve", str(runs[0]), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split(" at ")[1].split()[0]
        port = url.rsplit(":", 1)[1].strip("/")
        for host, status in [(f"attacker.example:{port}", 400), (f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200)]:
            answer = httpx.get(url + "api/models", headers={"Host": host}, timeout=30)
            assert answer.status_code == status and answer.headers["x-content-type-options"] == "nosniff", host
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert allowed_hosts("0.0.0.0", "0.0.0.0") == allowed_hosts("poet.example", "192.0.2.1") == ["*"]  # the network


@pytest.mark.parametrize("host, address", [("LOCALHOST", "127.0.0.1"), ("127.1", "127.0.0.1"), ("ip6-localhost", "::1")])
def test_every_name_of_a_loopback_address_answers_this_machine_s_names_only(host, address):
    """The address bound decides, not how the name is spelt: "LOCALHOST" or "127.1" let any Host in before."""
    assert allowed_hosts(host, address) == sorted({"127.0.0.1", "localhost", "[::1]", host.lower()})


def test_a_diverged_run_s_perplexities_are_served_however_large():
    """The report's plot leaves out perplexities past 1e50 (matplotlib's ticks overflow); the API and page did too."""
    from neuralda.serve import checkpoint_info

    info = checkpoint_info("last", {"epoch": 3, "val_loss": 150.0}, [{"epoch": 3, "train_ppl": 5.87e91}])
    assert info.val_ppl == pytest.approx(math.exp(150.0)) and info.train_ppl == 5.87e91
    info = checkpoint_info("last", {"epoch": 3, "val_loss": None}, [{"epoch": 3, "val_ppl": 1e300, "train_ppl": 0}])
    assert info.val_ppl == 1e300 and info.train_ppl is None


def test_a_bug_is_a_500_with_the_security_headers_and_a_traceback_in_the_log(runs, monkeypatch, capfd):
    import neuralda.serve

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(neuralda.serve, "write_poems", broken)
    with LiveServer([str(runs[0])]) as live, httpx.Client(base_url=live.url, timeout=20) as c:
        answer = write(c, words=5)
    assert answer.status_code == 500 and "a bug: its log says where" in answer.json()["detail"]
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "RuntimeError: a bug" in capfd.readouterr().err


def test_every_answer_says_the_page_loads_only_its_own_files_and_is_framed_by_no_site(client):
    """A second line of defence behind writing poems as text: no other site's script, frame or referrer."""
    for path, status in [("/", 200), ("/app.js", 200), ("/api/models", 200), ("/api/nothing", 404), ("/nope.html", 404)]:
        answer = client.get(path)
        policy = dict(rule.strip().split(" ", 1) for rule in answer.headers["content-security-policy"].split(";"))
        assert answer.status_code == status, path
        assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'", path
        assert policy["frame-ancestors"] == "'none'" and answer.headers["referrer-policy"] == "no-referrer", path
        assert answer.headers["x-content-type-options"] == "nosniff", path
