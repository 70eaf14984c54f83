"""The training loop: batches, validation, checkpoints, resume, early stopping, progress and metrics."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from . import __version__
from .corpus import read_corpus, split_poems, write_corpus
from .errors import NeuraldaError
from .evaluate import autocast, perplexity, token_nll
from .files import append_line, atomic_write, write_json
from .generate import write_poems
from .models import build_model, default_size, recipe
from .run import FORMAT_VERSION, Run, load_model_tensors, model_tensors, read_checkpoint, save_checkpoint
from .tokenizer import POEM_END, Vocab, tokenize

SAMPLE_START = "love"  # the seed's blog writes every sample from "love"
SAMPLE_SEED = 0
# Options that may change when a run is resumed; everything else comes from its config.json.
RESUMABLE = ("epochs", "max_time", "patience", "device", "save_at")


@dataclass
class TrainConfig:
    """Every training setting; ``None`` means "take it from the architecture's recipe"."""

    corpus: str = ""
    output: str = ""
    arch: str = "lstm"
    epochs: int | None = None
    save_at: tuple[int, ...] | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    lr: float | None = None
    dropout: float | None = None
    weight_decay: float | None = None
    hidden: int | None = None
    layers: int | None = None
    patience: int | None = None
    val_fraction: float = 0.1
    max_time: float | None = None  # seconds
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16
    seed: int = 0
    min_count: int = 1
    keep_case: bool = False
    progress: bool = True

    def resolved(self, train_tokens: int) -> dict:
        """The full configuration: given values, then the recipe's, then sizes from the corpus."""
        r = recipe(self.arch)
        out = asdict(self)
        for f in fields(r):
            if out.get(f.name) is None:
                out[f.name] = getattr(r, f.name)
        hidden, layers = default_size(self.arch, train_tokens)
        out["hidden"] = out["hidden"] or hidden
        out["layers"] = out["layers"] or layers
        out["save_at"] = sorted(set(out["save_at"]))
        out.pop("progress")
        out.update(format_version=FORMAT_VERSION, neuralda_version=__version__, train_tokens=train_tokens)
        for key in ("epochs", "batch_size", "seq_len", "hidden", "layers"):
            if out[key] < 1:
                raise NeuraldaError(f"--{key.replace('_', '-')} must be at least 1, got {out[key]}")
        if not 0 <= out["dropout"] < 1:
            raise NeuraldaError(f"--dropout must be in [0, 1), got {out['dropout']}")
        if not out["lr"] > 0:
            raise NeuraldaError(f"--lr must be above 0, got {out['lr']}")
        return out


def pick_device(name: str) -> str:
    """``auto``: CUDA, then Apple's MPS, then the CPU; an unavailable device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise NeuraldaError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NeuraldaError("--device cuda: no CUDA GPU is available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise NeuraldaError("--device mps: Apple's MPS is not available here")
    return name


def pick_precision(name: str, device: str) -> str:
    """``auto``: bf16 autocast on CPUs with bf16 matrix units (measured ~1.8x faster), else float32."""
    if name not in ("auto", "fp32", "bf16"):
        raise NeuraldaError(f"unknown precision {name!r}; choose auto, fp32 or bf16")
    if name != "auto":
        return name
    if device == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16"
    return "fp32"


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``1h`` or plain seconds, as seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise NeuraldaError(f"not a duration: {text!r} (use 90s, 10m, 1h or seconds)") from None
    if not value > 0:
        raise NeuraldaError(f"a duration must be above 0, got {text!r}")
    return value


def batches(ids: torch.Tensor, cfg: dict, epoch: int):
    """(inputs, targets, reset) batches for one epoch, as views of one tensor.

    Stateful recipes read ``batch_size`` parallel streams in chunks of ``seq_len`` (got-book-6, AWD-LSTM); the seed
    reads shuffled windows of ``seq_len`` words, as Keras' ``model.fit(shuffle=True)`` did.
    """
    n = ids.numel() - 1
    size, length = cfg["batch_size"], cfg["seq_len"]
    if cfg["stateful"]:
        streams = min(size, n)
        span = n // streams
        x = ids[: streams * span].view(streams, span)
        y = ids[1 : streams * span + 1].view(streams, span)
        for i in range(0, span, length):
            yield x[:, i : i + length], y[:, i : i + length], i == 0
        return
    windows = max(1, n // length)
    length = min(length, n)
    x = ids[: windows * length].view(windows, length)
    y = ids[1 : windows * length + 1].view(windows, length)
    order = torch.randperm(windows, generator=torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch))
    for i in range(0, windows, size):
        idx = order[i : i + size].to(ids.device)
        yield x[idx], y[idx], True


def batch_count(n_ids: int, cfg: dict) -> int:
    n = n_ids - 1
    if cfg["stateful"]:
        return math.ceil((n // min(cfg["batch_size"], n)) / cfg["seq_len"])
    return math.ceil(max(1, n // cfg["seq_len"]) / cfg["batch_size"])


def make_optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, list]:
    """The optimizer state as named tensors plus its JSON-able parameter groups (no pickling)."""
    sd = opt.state_dict()
    tensors = {
        f"optim/{idx}/{key}": value if torch.is_tensor(value) else torch.tensor(value)
        for idx, state in sd["state"].items()
        for key, value in state.items()
    }
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


class Progress:
    """A bar on a terminal (epoch, loss, validation perplexity, tokens/s, time left); plain lines otherwise."""

    def __init__(self, enabled: bool, epochs: int, steps: int) -> None:
        self.tty = enabled and sys.stderr.isatty()
        self.enabled, self.epochs, self.steps = enabled, epochs, steps
        self.bar = None

    def start_epoch(self, epoch: int) -> None:
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{self.epochs}", unit="batch", leave=False)

    def step(self, done: int, loss: float | None, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.n = done
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end_epoch(self, row: dict, left: float) -> None:
        self.close()
        if self.enabled:
            val = f"val ppl {row['val_ppl']:.1f}" if row["val_ppl"] is not None else "no validation"
            star = " *" if row["best"] else ""
            print(
                f"epoch {row['epoch']}/{self.epochs}  train loss {row['train_loss']:.3f}  {val}{star}  "
                f"{row['tokens_per_s']:,.0f} tok/s  {row['seconds']:.1f}s  ~{_human(left)} left",
                file=sys.stderr,
                flush=True,
            )


def _human(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _prepare(cfg: TrainConfig) -> Run:
    """Read and split the corpus, build the vocabulary and write the new run directory."""
    out = Path(cfg.output)
    if (out / "config.json").exists():
        raise NeuraldaError(f"{out} already holds a run; continue it with --resume or choose another -o")
    poems = read_corpus(cfg.corpus)
    train_poems, val_poems = split_poems(poems, cfg.val_fraction, cfg.seed)
    vocab = Vocab.build((tokenize(p.text, cfg.keep_case) for p in train_poems), cfg.min_count, cfg.keep_case)
    train_tokens = len(vocab.encode_poems(p.text for p in train_poems))
    config = cfg.resolved(train_tokens)
    config["device"] = cfg.device
    write_corpus(out / "data" / "train.jsonl", train_poems)
    write_corpus(out / "data" / "val.jsonl", val_poems)
    vocab.save(out / "vocab.json")
    write_json(out / "config.json", config)  # written last: a run directory with config.json is complete
    return Run.open(out)


def _stream(run: Run, split: str) -> torch.Tensor:
    """The split as one id tensor; each poem follows a poem break, as in writing."""
    poems = run.poems(split)
    return torch.tensor([run.vocab.stoi[POEM_END]] + run.vocab.encode_poems(p.text for p in poems), dtype=torch.long)


def _truncate_epochs(path: Path, epoch: int) -> None:
    """Keep each epoch once: drop lines written after the checkpoint a resumed run starts from."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epoch]
    atomic_write(path, "".join(ln + "\n" for ln in keep))


@dataclass
class TrainResult:
    run: Path
    epochs: int
    best_epoch: int
    best_val_ppl: float | None
    stopped: str  # "epochs" | "patience" | "time"


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a model into ``cfg.output`` (or continue the run there with ``resume``)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    started = time.monotonic()
    if resume:
        run = Run.open(cfg.output)
        for key in RESUMABLE:
            value = getattr(cfg, key)
            if value is not None:
                run.config[key] = sorted(set(value)) if key == "save_at" else value
        write_json(run.path / "config.json", run.config)
    else:
        run = _prepare(cfg)
    c = run.config
    device = pick_device(c["device"])
    precision = pick_precision(c["precision"], device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(c["seed"])
    model = run.build_model().to(device)
    optimizer = make_optimizer(model, c)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    pin = device.startswith("cuda")
    train_ids = _stream(run, "train")
    val_ids = _stream(run, "val")
    train_ids = (train_ids.pin_memory() if pin else train_ids).to(device, non_blocking=True)
    ckpt_dir = run.path / "checkpoints"
    metrics_path = run.path / "metrics.jsonl"
    state = {"epoch": 0, "step": 0, "best_val": None, "best_epoch": 0, "bad_epochs": 0}

    def save(name: str, with_optimizer: bool = False) -> None:
        tensors = model_tensors(model)
        meta = {"epoch": state["epoch"], "arch": c["arch"], "val_loss": state.get("last_val")}
        if with_optimizer:
            opt_tensors, groups = optimizer_tensors(optimizer)
            tensors = {**tensors, **opt_tensors, "rng/torch": torch.get_rng_state()}
            if device.startswith("cuda"):
                tensors["rng/cuda"] = torch.cuda.get_rng_state()
            meta.update(trainer=state, param_groups=groups, scheduler=scheduler.state_dict())
        save_checkpoint(ckpt_dir / f"{name}.safetensors", tensors, meta)

    if resume:
        path = run.checkpoint_path("last")
        tensors, meta = read_checkpoint(path)
        load_model_tensors(model, tensors, path)
        if "trainer" not in meta:
            raise NeuraldaError(f"{path}: holds no trainer state; cannot resume")
        load_optimizer(optimizer, {k: v.to(device) if k.startswith("optim/") else v for k, v in tensors.items()}, meta["param_groups"])
        scheduler.load_state_dict(meta["scheduler"])
        state.update(meta["trainer"])
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and device.startswith("cuda"):
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        for name in ("metrics.jsonl", "samples.jsonl"):
            _truncate_epochs(run.path / name, state["epoch"])
        log(f"resuming {run.path} after epoch {state['epoch']}")
    else:
        save("last", with_optimizer=True)  # epoch 0: a run killed during its first epoch can resume too

    steps = batch_count(train_ids.numel(), c)
    progress = Progress(cfg.progress, c["epochs"], steps)
    stopped = "epochs"
    epoch_seconds: list[float] = []
    log(
        f"training {c['arch']} ({sum(p.numel() for p in model.parameters()):,} parameters, vocabulary "
        f"{len(run.vocab):,}) on {train_ids.numel():,} tokens, {device} {precision}"
    )
    try:
        while state["epoch"] < c["epochs"]:
            if c["patience"] and state["bad_epochs"] >= c["patience"]:
                stopped = "patience"
                break
            if cfg.max_time and epoch_seconds and time.monotonic() - started + epoch_seconds[-1] > cfg.max_time:
                stopped = "time"
                break
            epoch = state["epoch"] + 1
            t0 = time.monotonic()
            model.train()
            total = torch.zeros((), device=device)
            tokens = 0
            hidden = None
            progress.start_epoch(epoch)
            last_report = t0
            for done, (x, y, reset) in enumerate(batches(train_ids, c, epoch), 1):
                if reset:
                    hidden = None
                with autocast(device, precision):
                    logits, hidden = model(x, hidden)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c["clip_value"]:
                    torch.nn.utils.clip_grad_value_(model.parameters(), c["clip_value"])
                if c["clip_norm"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), c["clip_norm"])
                optimizer.step()
                if c["stateful"]:
                    hidden = [(h.detach(), s.detach()) for h, s in hidden]
                total += loss.detach() * y.numel()
                tokens += y.numel()
                now = time.monotonic()
                if progress.tty and now - last_report > 1.0:  # a host sync, so only once a second
                    progress.step(done, float(total) / tokens, tokens / (now - t0))
                    last_report = now
            train_seconds = time.monotonic() - t0
            train_loss = float(total) / max(tokens, 1)
            if not math.isfinite(train_loss):
                raise NeuraldaError(
                    f"the training loss became {train_loss} in epoch {epoch}; the last good checkpoint is kept "
                    f"in {ckpt_dir} (try a lower --lr)"
                )
            val_loss = None
            if val_ids.numel() > 1:
                nll, count = token_nll(model, val_ids, precision)
                val_loss = nll / count
            state["epoch"], state["step"] = epoch, state["step"] + steps
            state["last_val"] = val_loss
            is_best = val_loss is None or state["best_val"] is None or val_loss < state["best_val"]
            if is_best:
                state["best_val"], state["best_epoch"], state["bad_epochs"] = val_loss, epoch, 0
            else:
                state["bad_epochs"] += 1
            if c["schedule"] == "plateau" and val_loss is not None:
                scheduler.step(val_loss)
            seconds = time.monotonic() - t0
            epoch_seconds.append(seconds)
            row = {
                "epoch": epoch,
                "step": state["step"],
                "train_loss": round(train_loss, 5),
                "train_ppl": round(perplexity(train_loss, 1), 3),
                "val_loss": None if val_loss is None else round(val_loss, 5),
                "val_ppl": None if val_loss is None else round(perplexity(val_loss, 1), 3),
                "tokens_per_s": round(tokens / train_seconds, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 3),
                "best": is_best,
            }
            if is_best:
                save("best")
            if epoch in c["save_at"]:
                save(f"epoch-{epoch}")
                _write_sample(run, model, epoch)
            append_line(metrics_path, json.dumps(row))
            save("last", with_optimizer=True)  # after the metrics: a run killed in between redoes this epoch
            left = (c["epochs"] - epoch) * (sum(epoch_seconds) / len(epoch_seconds))
            if cfg.max_time:
                left = min(left, cfg.max_time - (time.monotonic() - started))
            progress.end_epoch(row, left)
    except KeyboardInterrupt:
        progress.close()
        log(f"\ninterrupted: {run.path} holds epoch {state['epoch']}; continue with --resume")
        raise
    if epoch_seconds and state["epoch"] not in c["save_at"]:
        _write_sample(run, model, state["epoch"], checkpoint="last")
    best_ppl = None if state["best_val"] is None else perplexity(state["best_val"], 1)
    log(
        f"done after {state['epoch']} epochs ({stopped}); best epoch {state['best_epoch']}"
        + (f", val ppl {best_ppl:.1f}" if best_ppl is not None else "")
    )
    return TrainResult(run.path, state["epoch"], state["best_epoch"], best_ppl, stopped)


def _write_sample(run: Run, model, epoch: int, checkpoint: str | None = None) -> None:
    """A poem from "love" (or from a poem break when the corpus lacks the word), for the report."""
    start = SAMPLE_START if SAMPLE_START in run.vocab else ""
    poem, ended = write_poems(model, run.vocab, start, words=80, n=1, seed=SAMPLE_SEED)[0]
    model.train()
    row = {"epoch": epoch, "checkpoint": checkpoint or f"epoch-{epoch}", "start": start, "seed": SAMPLE_SEED, "poem": poem}
    append_line(run.path / "samples.jsonl", json.dumps(row, ensure_ascii=False))
