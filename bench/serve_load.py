"""A bounded load on ``neuralda serve``: N poems asked by C clients at once, all on 127.0.0.1.

    python bench/serve_load.py [RUN ...] [--requests 500] [--clients 16] [--words 60]

Without RUN, a model is first trained on the bundled demo corpus for one epoch (its size is the default for that
corpus). The server runs in its own process, as a user runs it. Prints one JSON object (throughput in requests per
second, client-side latency percentiles, errors, the server's memory and how much it grew under the load after a
warm-up) and appends it to bench/results/serve_load.jsonl (see common.py).
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

START_SERVER = "import sys; from neuralda.serve import serve; serve(sys.argv[1:], port=0)"


def demo_run(folder: Path) -> Path:
    """One epoch on the demo corpus, at the size ``neuralda train`` picks for it."""
    from neuralda.train import TrainConfig, train

    with importlib.resources.as_file(importlib.resources.files("neuralda") / "demo" / "poems.jsonl") as corpus:
        cfg = TrainConfig(corpus=str(corpus), output=str(folder / "demo"), epochs=1, device="cpu", progress=False)
        return train(cfg, log=lambda _: None).run


def start_server(run_dirs: list[str]) -> tuple[subprocess.Popen, str]:
    """``serve`` on a free loopback port in a child process, and the address it printed."""
    proc = subprocess.Popen([sys.executable, "-c", START_SERVER, *run_dirs], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "neuralda: writing poems at http://127.0.0.1:PORT/ ..."
    if "http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line.strip() or 'no output'}")
    return proc, line.split(" at ", 1)[1].split()[0].rstrip("/")


def load(url: str, requests: int, clients: int, body: dict) -> dict:
    """Send ``requests`` poems' worth of requests from ``clients`` threads; time each."""
    latencies: list[float] = []
    server_ms: list[float] = []
    words: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_seed = iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    seed = next(next_seed, None)
                if seed is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = http.post("/api/generate", json={**body, "seed": seed})
                    ok, detail = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok, detail = False, repr(e)
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        server_ms.append(r.json()["ms"])
                        words.append(r.json()["words"])
                    else:
                        errors.append(detail)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [float("nan")] * 99
    return {
        "throughput": round(len(latencies) / seconds, 2),
        "p50_ms": round(q[49], 1),
        "p95_ms": round(q[94], 1),
        "p99_ms": round(q[98], 1),
        "max_ms": round(max(latencies, default=float("nan")), 1),
        "server_p50_ms": round(statistics.median(server_ms), 1) if server_ms else None,
        "words_per_s": round(sum(words) / seconds, 1),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(seconds, 2),
    }


def rss_mb(pid: int) -> float | None:
    """The resident memory of process ``pid`` (Linux), to show that a long load does not grow it."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    return round(int(status.read_text().split("VmRSS:")[1].split()[0]) / 1024, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run directories to serve (default: a demo run trained first)")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--words", type=int, default=60, help="words per poem")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dirs = args.runs or [str(demo_run(Path(tmp)))]
        proc, url = start_server(run_dirs)
        try:
            model = httpx.get(f"{url}/api/models", timeout=30).json()["runs"][0]
            body = {"start": model["start"], "words": args.words, "temperature": 1.0, "top_p": 0.95}
            load(url, 4 * args.clients, args.clients, body)  # warm-up: the batch sizes the load will see
            rss_before = rss_mb(proc.pid)
            result = load(url, args.requests, args.clients, body)
            rss_after = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)

    report(
        "serve_load",
        {
            "requests": args.requests,
            "clients": args.clients,
            "words": args.words,
            **result,
            "server_rss_mb": rss_after,
            "server_rss_growth_mb": None if rss_after is None else round(rss_after - rss_before, 1),
            "model": {k: model[k] for k in ("name", "arch", "hidden", "layers", "vocab_size")},
            "cpus": os.cpu_count(),
        },
    )


if __name__ == "__main__":
    main()
