"""The training loop: batches, validation, checkpoints, resume, early stopping, progress and metrics."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import json
import math
import numbers
import os
import re
import reprlib
import shutil
import signal
import sys
import threading
import time
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, NamedTuple, TypeVar

import torch
from torch.nn import functional as F

from . import __version__
from .corpus import corpus_jsonl, read_corpus, split_poems
from .errors import NeuraldaError, OptionError, Terminated
from .evaluate import HeldoutScorer, autocast, format_ppl, loss_chunk, perplexity
from .files import (
    PARTIAL_WRITE, append_line, atomic_write, folder_lock, made_folder, json_text, remove_partial_writes, write_json,
)
from .generate import NoDistribution, default_start, write_poems
from .models import RECIPES, Recipe, build_model, default_size, recipe
from .run import (
    FORMAT_VERSION,
    Run,
    _describe,
    _whole,
    check_types,
    checkpoint_meta,
    json_like,
    load_model_tensors,
    model_tensors,
    read_checkpoint,
    read_epoch_rows,
    save_checkpoint,
)
from .tokenizer import POEM_END, Vocab, token_counts

SAMPLE_SEED = 0
# Options that may change when a run is resumed; everything else comes from its config.json.
# An epoch gains when its held-out loss is 0.01% below the last gain's (ReduceLROnPlateau's own rule and default): the
# schedule halves the rate after each epoch that does not, and patience stops after that many in a row.
PLATEAU_THRESHOLD = 1e-4
RESUMABLE = ("epochs", "max_time", "patience", "device", "precision", "save_at", "save_every")
# What an option left at None means in a new run (resuming, it keeps the run's value).
DEFAULTS = {"arch": "lstm", "val_fraction": 0.1, "device": "auto", "precision": "auto", "seed": 0, "min_count": 1,
            "keep_case": False}
# What train writes into a run directory before its config.json (a run killed then left these); data/ holds the
# corpus split. A directory holding anything else is not ours to write into.
RUN_FILES = ("vocab.json", "data", "data/train.jsonl", "data/val.jsonl", "checkpoints", "metrics.jsonl",
             "samples.jsonl")
OS_LITTER = (".DS_Store", "Thumbs.db", "desktop.ini")  # what file browsers leave in a folder they have shown


@dataclass
class TrainConfig:
    """Every training setting; ``None`` means "take it from the architecture's recipe" (or from ``DEFAULTS``), and
    when resuming "the run's"."""

    corpus: str = ""
    output: str = ""
    arch: str | None = None
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
    unk_rate: float | None = None
    carry_state: bool | None = None
    val_fraction: float | None = None
    max_time: float | None = None  # seconds (0: no limit)
    save_every: float | None = None  # seconds between checkpoints (None: SAVE_EVERY; 0: after every epoch)
    device: str | None = None
    precision: str | None = None  # auto | fp32 | bf16
    seed: int | None = None
    min_count: int | None = None
    keep_case: bool | None = None
    progress: bool = True
    compile: bool = False  # this invocation's choice: a speed-up that trains the same model

    def checked(self) -> "TrainConfig":
        """This config with every value of its field's type (numpy's numbers and paths made plain ones), or a
        one-line error naming the field: from Python, epochs=1.5 trained 2 epochs, and a Path or seed=1.5 failed in
        json or torch once the run's files were written."""
        hints = typing.get_type_hints(TrainConfig)
        c = replace(self, **{f.name: _as_type(f.name, getattr(self, f.name), hints[f.name]) for f in fields(self)})
        return c if c.save_at is None else replace(c, save_at=tuple(sorted(set(c.save_at))))

    def with_defaults(self) -> "TrainConfig":
        """This config with ``DEFAULTS`` for the options left at None, as a new run takes them."""
        return replace(self, **{k: v for k, v in DEFAULTS.items() if getattr(self, k) is None})

    def resolved(self, train_tokens: int) -> dict:
        """The full configuration: given values, then the recipe's, then sizes from the corpus."""
        r = recipe(self.arch)
        if self.carry_state is not None and not r.stateful:
            flag = "--carry-state" if self.carry_state else "--no-carry-state"
            raise NeuraldaError(
                f"{flag}: {self.arch} reads shuffled windows, each from a zero state; it applies to the recipes that "
                f"read parallel streams ({', '.join(a for a, each in RECIPES.items() if each.stateful)})"
            )
        out = asdict(self)
        for f in fields(r):
            if out.get(f.name) is None:
                out[f.name] = getattr(r, f.name)
        hidden, layers = default_size(self.arch, train_tokens)
        out["hidden"] = out["hidden"] or hidden
        out["layers"] = out["layers"] or layers
        out["save_at"] = list(out["save_at"])
        out["corpus"] = str(Path(self.corpus).resolve())  # a resume from another folder names the same file
        out.pop("progress")
        out.update(format_version=FORMAT_VERSION, neuralda_version=__version__, train_tokens=train_tokens)
        check_settings(out)
        return out


def _as_type(name: str, value: object, hint: object) -> object:
    """``value`` as the type ``hint`` names (``TrainConfig``'s: str, int, float, bool, a tuple of ints, or None)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return None if value is None else _as_type(name, value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is tuple:
        iterable = not isinstance(value, (str, bytes)) and isinstance(value, typing.Iterable)
        items = list(value) if iterable else []
        if iterable and not any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items):
            return tuple(int(v) for v in items)
    elif hint is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    elif hint is bool and isinstance(value, bool):
        return value
    elif hint is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    elif hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise NeuraldaError(f"{name} must be {_describe(hint)}, got {value!r}")


# The most a rate, weight decay or clipping bound may be: far past any that trains, and inside float32's range, where
# the optimizer's products overflowed as a traceback (Adam's first step with --lr 1e38 is 1e39).
MAX_SETTING = 1e6


def check_settings(c: dict, path: Path | None = None) -> None:
    """One-line errors for values no run can train with (ranges written so that NaN fails them too), named as flags,
    or as keys of ``path`` (a resumed run's config.json, where the values came from)."""

    def name(key: str) -> str:
        return f"{path}: {key}" if path else "--" + key.replace("_", "-")

    for key in ("epochs", "batch_size", "seq_len", "hidden", "layers"):
        if not c[key] >= 1:
            raise NeuraldaError(f"{name(key)} must be at least 1, got {c[key]}")
    if not 0 <= c["dropout"] < 1:
        raise NeuraldaError(f"{name('dropout')} must be in [0, 1), got {c['dropout']}")
    if not 0 < c["lr"] <= MAX_SETTING:
        raise NeuraldaError(f"{name('lr')} must be a number above 0, at most {MAX_SETTING:g}, got {c['lr']}")
    if not 0 <= c["weight_decay"] <= MAX_SETTING:
        raise NeuraldaError(f"{name('weight_decay')} must be a number from 0 to {MAX_SETTING:g}, got {c['weight_decay']}")
    if not 0 <= c["unk_rate"] <= 1:
        raise NeuraldaError(f"{name('unk_rate')} must be in [0, 1], got {c['unk_rate']}")
    if not c["patience"] >= 0:
        raise NeuraldaError(f"{name('patience')} must be 0 (no early stop) or more, got {c['patience']}")
    for key in ("max_time", "save_every"):  # seconds; --max-time 0: no limit, --save-every 0: every epoch
        if c[key] is not None and not c[key] >= 0:
            raise NeuraldaError(f"{name(key)} must be 0 or more seconds, got {c[key]}")
    if c.get("epsilon_hat") is not None and not 0 < c["epsilon_hat"] < 1:
        raise NeuraldaError(f"{name('epsilon_hat')} must be a number in (0, 1), got {c['epsilon_hat']}")
    for key in ("clip_value", "clip_norm"):
        if c[key] is not None and not 0 <= c[key] <= MAX_SETTING:
            raise NeuraldaError(f"{name(key)} must be a number from 0 (no clipping) to {MAX_SETTING:g}, got {c[key]}")


# config.json's training settings that are not a recipe's, as JSON types (a recipe's have the Recipe's annotations).
RUN_SETTING_TYPES = {"val_fraction": float, "max_time": float | None, "save_every": float | None, "device": str,
                     "precision": str, "seed": int, "min_count": int, "keep_case": bool}
SETTING_CHOICES = {"optimizer": ("adam", "adamw"), "schedule": ("none", "plateau")}


def check_setting_types(c: dict, path: Path) -> None:
    """One-line errors for a training setting of ``path`` (config.json) that is missing, of the wrong type or an
    unknown name: a hand-edited file (``Run.open`` checks the model's settings)."""
    check_types(c, {**typing.get_type_hints(Recipe), **RUN_SETTING_TYPES}, path)
    for key, choices in SETTING_CHOICES.items():
        if c[key] not in choices:
            raise NeuraldaError(f"{path}: {key} should be one of {', '.join(choices)}, not {reprlib.repr(c[key])}")


def check_unchanged(cfg: TrainConfig, run: Run) -> None:
    """A one-line error for options given to a resume with values other than the run's: only ``RESUMABLE`` ones
    can change (the run's split, vocabulary, model and optimizer were made with the others)."""
    given, was = [], []
    recorded = run.config
    # realpath, not Path.resolve: a symlink loop is RuntimeError there (Python 3.11), a traceback.
    if cfg.corpus and os.path.realpath(cfg.corpus) != os.path.realpath(str(recorded.get("corpus", ""))):
        given.append("the corpus")
        was.append(f"the corpus {recorded.get('corpus')}")
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in (*RESUMABLE, "corpus", "output", "progress", "compile") or value is None:
            continue
        if value != recorded.get(f.name):
            flag, old = "--" + f.name.replace("_", "-"), recorded.get(f.name)
            given.append(flag)
            was.append(f"{flag} {str(old).lower() if isinstance(old, bool) else old}")
    if given:
        raise NeuraldaError(
            f"{', '.join(given)} cannot change when resuming ({run.path} was trained with {', '.join(was)}); "
            "start a new run with another -o"
        )


def pick_device(name: str) -> str:
    """``auto``: CUDA, then Apple's MPS, then the CPU; an unavailable device is an error."""
    if not isinstance(name, str):
        raise NeuraldaError(f"a device is named by text (auto, cpu, cuda or mps), not {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise NeuraldaError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("device", f"{name}: no CUDA GPU is available here")
    if name.startswith("cuda:"):  # torch takes a bad index or a missing GPU as a RuntimeError at first use
        count = torch.cuda.device_count()
        if not re.fullmatch(r"cuda:(0|[1-9][0-9]*)", name) or int(name[len("cuda:") :]) >= count:
            raise OptionError("device", f"{name}: this machine's CUDA GPUs are cuda:0 to cuda:{count - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise OptionError("device", "mps: Apple's MPS is not available here")
    return name


def pick_precision(name: str, device: str, arch: str = "lstm") -> str:
    """``auto``: bf16 autocast on CPUs with bf16 matrix units (measured ~1.8x faster for the seed's LSTM) and for
    the transformer on GPUs with them (Ampere on); float32 for LSTMs on GPUs, where autocast would run cuDNN's LSTM in
    float16 (as it did, gaining nothing, when bf16 was measured on an H200): bf16 by name is an error there."""
    if name not in ("auto", "fp32", "bf16"):
        raise NeuraldaError(f"unknown precision {name!r}; choose auto, fp32 or bf16")
    if name == "bf16" and device.startswith("cuda") and arch != "gpt":
        # aten/src/ATen/cudnn/AutocastRNN.cpp casts a cuDNN LSTM to float16 whatever autocast's dtype, and float16
        # gradients without loss scaling underflow.
        raise OptionError(
            "precision", "bf16 on CUDA: autocast runs cuDNN's LSTM in float16, not bfloat16; use fp32 (auto) there"
        )
    if name != "auto":
        return name
    if device == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16"
    # bf16 units: compute capability 8 (Ampere) on. torch.cuda.is_bf16_supported() also says yes where a GPU only
    # emulates it (a T4, a V100: torch/cuda/__init__.py, including_emulation=True by default), slower than float32.
    if arch == "gpt" and device.startswith("cuda"):
        return "bf16" if torch.version.hip or torch.cuda.get_device_capability(device) >= (8, 0) else "fp32"
    return "fp32"


def parse_duration(text: str, zero: bool = False) -> float:
    """``90s``, ``10m``, ``1h`` or plain seconds, as seconds; above 0 (``zero``: or 0)."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "inf" too: config.json would hold Infinity, which JSON has not
        raise NeuraldaError(f"not a duration: {text!r} (use 90s, 10m, 1h or seconds)")
    if not (value > 0 or zero and value == 0):
        raise NeuraldaError(f"a duration must be {'0 or more' if zero else 'above 0'}, got {text!r}")
    return value


def torch_seed(value: int) -> int:
    """``value`` as a seed torch takes: any int, reduced modulo 2**64 as torch reduces the seeds it accepts (-1 seeds
    as 2**64 - 1), so seeds derived from a large --seed work and every seed that worked draws as before."""
    return value % 2**64


def batches(ids: torch.Tensor, cfg: dict, epoch: int, rank: int = 0, world: int = 1):
    """(inputs, targets, reset, weight) batches for one epoch, as views of one tensor; process ``rank`` of
    ``world`` gets its slice of every batch's rows.

    ``weight`` turns the slice's summed loss into its share of the whole batch's mean (``world / tokens``: DDP
    averages the processes' gradients), so uneven slices train as one process would. A process left with no rows
    (the last batch can have fewer than ``world``) reads the first row with weight 0: it still joins every step.

    Stateful recipes read ``batch_size`` parallel streams in chunks of ``seq_len`` (got-book-6, AWD-LSTM); the seed
    reads shuffled windows of ``seq_len`` words, as Keras' ``model.fit(shuffle=True)`` did.
    """
    for x, y, reset in _global_batches(ids, cfg, epoch):
        xs, ys, weight = x.tensor_split(world)[rank], y.tensor_split(world)[rank], world / y.numel()
        yield (xs, ys, reset, weight) if len(xs) else (x[:1], y[:1], reset, 0.0)


def _global_batches(ids: torch.Tensor, cfg: dict, epoch: int):
    n = ids.numel() - 1
    size, length = cfg["batch_size"], cfg["seq_len"]
    if cfg["stateful"]:
        streams = min(size, n)
        span = n // streams
        x = ids[: streams * span].view(streams, span)
        y = ids[1 : streams * span + 1].view(streams, span)
        for i in range(0, span, length):
            yield x[:, i : i + length], y[:, i : i + length], i == 0 or not cfg["carry_state"]
        return
    windows = max(1, n // length)
    length = min(length, n)
    x = ids[: windows * length].view(windows, length)
    y = ids[1 : windows * length + 1].view(windows, length)
    shuffle = torch.Generator().manual_seed(torch_seed(cfg["seed"] * 100_003 + epoch))
    order = torch.randperm(windows, generator=shuffle)
    order = order.to(ids.device)  # once an epoch: a copy per batch would make the host wait for the GPU each step
    for i in range(0, windows, size):
        idx = order[i : i + size]
        yield x[idx], y[idx], True


def batch_count(n_ids: int, cfg: dict) -> int:
    n = n_ids - 1
    if cfg["stateful"]:
        return math.ceil((n // min(cfg["batch_size"], n)) / cfg["seq_len"])
    return math.ceil(max(1, n // cfg["seq_len"]) / cfg["batch_size"])


SAVE_EVERY = 30.0  # seconds; checked after each epoch, so a killed run loses at most this plus one epoch
CPU_GROUP_TOKENS = 4096  # tokens a forward and backward hold at once on a CPU (see row_groups)
CPU_LOSS_BLOCK = 2**26  # logits the loss makes at once on a CPU: 128 MB in bf16 (see loss_block)
# Logits a GPU's loss holds whole (1 GB of float32): there plain cross-entropy trained the seed's model 9% faster
# than _LinearCrossEntropy's chunks (0.091 s against 0.099 an epoch on an H200, V 9,571), our lstm 14%; past
# this the chunks keep a big vocabulary's logits from filling a smaller GPU.
GPU_FULL_LOGITS = 1 << 28


def row_groups(rows: int, seq_len: int, device: str) -> int:
    """How many groups of rows a batch's forward and backward run in, one group after another, their gradients
    summed: the same step (rows are independent streams), holding a group's activations at a time. On a CPU, for
    the seed's model at 512 x 30, 4 groups trained as fast as 1 and peaked at 0.88 GB against 1.61 in float32 (0.75
    against 1.17 in bf16). On a GPU one group: memory is plenty and each group costs its launches."""
    if not device.startswith("cpu"):
        return 1
    return math.ceil(rows / max(1, CPU_GROUP_TOKENS // seq_len))


def loss_block(rows: int, vocab_size: int, chunk: int, device: str | torch.device) -> int:
    """Rows of logits the training loss makes by one matrix product: on a GPU a chunk (``loss_chunk``); on a CPU
    all of a row group's, up to ``CPU_LOSS_BLOCK``, in blocks of even size. Chunks of 16 MB took 108 small products a
    step for the seed's model (V 9,571); a group's logits in one product and the gradient of h in one more: 2.35-2.52
    s a batch against 2.52-2.71 (bf16, 4 row groups, interleaved: the medians of 15 and 18 batches each), peaking at
    1.07 GB in bf16 (was 1.05) and 1.31 in float32 (was 1.16)."""
    if not str(device).startswith("cpu"):
        return chunk
    blocks = math.ceil(rows * vocab_size / CPU_LOSS_BLOCK)
    return max(1, math.ceil(rows / blocks))


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``h @ weight.T + bias`` against ``targets`` times ``loss_weight``
    (``1 / len(targets)``: the mean), a block of rows at a time.

    On a CPU, and on a GPU past ``GPU_FULL_LOGITS``, the full logits and their gradient (334 MB each for the seed's
    batch of 512 x 30 over 5,437 words, in float32) are never held: each block's softmax gradient is turned into the
    gradients of ``h``, ``weight`` and ``bias`` at once (as fused linear cross-entropy kernels do), so training the
    seed's model peaks near 1 GB instead of 2.1. A block's logits are made by one matrix product and turned into
    their gradient in place, in the product's type, a cache-sized chunk at a time in float32; one product more
    gives the gradient of ``h``.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, dtype, loss_weight):
        n, chunk = targets.numel(), loss_chunk(weight.size(0), h.device)
        block = loss_block(n, weight.size(0), chunk, h.device)
        hc, wc = h.to(dtype), weight.to(dtype)
        # The weight's gradient is made transposed, from h's transpose: the same sums (bit for bit at the seed's,
        # lstm's and gpt's sizes; the demo's small model rounds a few differently), and on our CPUs a row group of
        # the seed's model (3,840 rows, V 9,571) took 81 ms for its chunk products against 115 for
        # ``part.T @ rows``: a step 7% less time (our lstm's and gpt's: the same).
        h_t = hc.T.contiguous()
        grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device)
        grad_w_t = torch.zeros(weight.shape[::-1], dtype=torch.float32, device=h.device)
        grad_b = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, n, block):
            rows, block_targets = hc[start : start + block], targets[start : start + block]
            g = rows @ wc.T  # the block's logits, then their gradient
            for i in range(0, len(rows), chunk):
                part, t = g[i : i + chunk], block_targets[i : i + chunk]
                logits = part.float()  # in float32 the chunk itself, worked in place
                if bias is not None:
                    logits += bias.float()
                # The softmax in place of the logits, with one exp (logsumexp and then exp(logits - lse) took two:
                # our lstm's steps were 6% slower than F.cross_entropy's once memory came cheap, see
                # _keep_freed_memory).
                top = logits.amax(-1, keepdim=True)
                target = logits.gather(1, t.unsqueeze(1)) - top
                p = logits.sub_(top).exp_()
                sums = p.sum(-1, keepdim=True)
                total += (sums.log() - target).sum()
                p *= loss_weight / sums
                p[torch.arange(t.numel(), device=t.device), t] -= loss_weight
                if grad_b is not None:
                    grad_b += p.sum(0)
                if p.dtype != part.dtype:
                    part.copy_(p)
                # The weight's gradient summed in float32 a chunk at a time: one bf16 product over the block rounds
                # the whole sum once, 1.6x the error (0.18% against 0.11%, our gpt after 10 steps); it trained the
                # seed's model another 5% faster, but our gpt's perplexity after 20 steps drifted +4% from float32's
                # (three seeds; +1.4% so).
                grad_w_t += h_t[:, start + i : start + i + len(part)] @ part  # a bf16 product added in float32
            grad_h[start : start + block] = g @ wc
        ctx.save_for_backward(grad_h, grad_w_t.T.contiguous().to(weight.dtype), grad_b)
        return total * loss_weight

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None if grad_b is None else grad_b * grad_out, None, None, None


def whole_logits(h: torch.Tensor, rows: int, vocab_size: int) -> bool:
    """Whether the loss takes its logits whole (plain cross-entropy) rather than a chunk at a time."""
    return h.is_cuda and rows * vocab_size <= GPU_FULL_LOGITS


class LossModule(torch.nn.Module):
    """The model and its loss as one module, so DistributedDataParallel sees one forward and one backward."""

    def __init__(self, model, precision: str) -> None:
        super().__init__()
        self.model = model
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def forward(self, x, y, state=None, weight: float | None = None):
        """The loss summed over ``y``'s tokens times ``weight`` (none: the mean), and the next state."""
        h, state = self.model.features(x, state)
        head = self.model.decoder
        weight = 1 / y.numel() if weight is None else weight
        if whole_logits(h, y.numel(), head.weight.size(0)):
            logits = head(h.flatten(0, 1)).float()
            return F.cross_entropy(logits, y.flatten(), reduction="sum") * weight, state
        loss = _LinearCrossEntropy.apply(h.flatten(0, 1), head.weight, head.bias, y.flatten(), self.dtype, weight)
        return loss, state


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for gradients on one device, by the same operations (the same gradients
    bit for bit), without its per-call grouping by device and type: on a GPU a small model's step waits on the host,
    and there clipping took 7% of an epoch of our lstm and 13% of our gpt's (0.5 ms of a ~6 ms step, 1.4 of ~11)."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def _uncompiled(kind: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``kind`` with its plain methods. torch.optim wraps ``step``, ``zero_grad``, ``add_param_group`` and the state
    dict's methods so that a compiled program does not trace into them, and their first call imports the compiler
    (torch._dynamo): 1.1-1.5 s at each training's start on our CPUs, 5.4 s on the H200 machine. The optimizer never
    runs inside a compiled program here (``--compile`` compiles the model and its loss), so the steps are the same."""
    wrapped = {
        name: getattr(kind, name).__wrapped__
        for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
        if hasattr(getattr(kind, name), "__wrapped__")  # another torch may not wrap them: then they stay
    }
    plain_step = getattr(kind.step, "__wrapped__", None)
    if plain_step is not None:

        def step(self, closure=None):
            with torch.no_grad():  # what the wrapper did besides the compiler's graph breaks
                return plain_step(self, closure)

        wrapped["step"] = step
    return type(kind.__name__, (kind,), wrapped)


class _EpsilonHat:
    """An optimizer whose parameter groups may hold ``epsilon_hat``: before each step their ``eps`` is set so that
    torch's update, lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), is Keras' and TensorFlow 1's, lr * sqrt(bc2) / bc1 *
    m / (sqrt(v) + epsilon_hat): eps = epsilon_hat / sqrt(bc2), bc2 = 1 - beta2^t. At the seed's first step that is
    3.2e-6 against torch's constant 1e-8, where the seed's gradients are mostly smaller (1e-9 to 1e-7 an element):
    its first steps moved the LSTM's weights 10x as far as Keras' would. The steps are counted in the group, which a
    checkpoint keeps."""

    def step(self, closure=None):
        for group in self.param_groups:
            if group.get("epsilon_hat"):
                group["epsilon_hat_steps"] += 1
                group["eps"] = group["epsilon_hat"] / math.sqrt(1 - group["betas"][1] ** group["epsilon_hat_steps"])
        return super().step(closure)


OPTIMIZERS = {
    name: type(kind.__name__, (_EpsilonHat, _uncompiled(kind)), {})
    for name, kind in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW))
}


def make_optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    """Adam or AdamW, with the recipe's ``epsilon_hat`` where it has one; on CUDA the fused kernels (one launch for
    all parameters, not a few per parameter)."""
    fused = True if next(model.parameters()).is_cuda else None
    opt = OPTIMIZERS[cfg["optimizer"]](model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=fused)
    if cfg.get("epsilon_hat"):  # runs made before the setting have none: torch's eps, as they trained
        for group in opt.param_groups:
            group.update(epsilon_hat=cfg["epsilon_hat"], epsilon_hat_steps=0)
    return opt


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
    """The saved state and settings, with ``opt``'s own choice of kernels: a run saved on a CPU may resume on a
    GPU, where the fused ones run (``make_optimizer``)."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    kernels = ("fused", "foreach", "capturable")
    groups = [{**saved, **{k: now[k] for k in kernels if k in now}} for saved, now in zip(groups, opt.param_groups)]
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

    def step(self, done: int, loss: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end_epoch(self, row: dict, left: float) -> None:
        self.close()
        if self.enabled:
            val = f"val ppl {format_ppl(row['val_ppl'])}" if row["val_ppl"] is not None else "no validation"
            star = " *" if row["best"] else ""
            cut = "  (cut short at --max-time)" if row["cut"] else ""
            print(
                f"epoch {row['epoch']}/{self.epochs}{cut}  train loss {row['train_loss']:.3f}  {val}{star}  "
                f"{row['tokens_per_s']:,.0f} tok/s  {row['seconds']:.1f}s  ~{_human(left)} left",
                file=sys.stderr,
                flush=True,
            )


def _human(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _prepare(cfg: TrainConfig, restart: bool = False) -> Run:
    """Read and split the corpus, build the vocabulary and write the new run directory (``restart``: over what a
    run killed before its config.json left there)."""
    out, cfg = Path(cfg.output), cfg.with_defaults()
    if (out / "config.json").exists():
        raise NeuraldaError(f"{out} already holds a run; continue it with --resume or choose another -o")
    foreign = _foreign_files(out)
    if foreign:  # train would replace a user's files of the same names (-o . replaced a data/train.jsonl)
        raise NeuraldaError(f"{out} holds files that are not a run's ({', '.join(foreign[:3])}); choose another -o")
    trained = [n for n in ("checkpoints", "metrics.jsonl", "samples.jsonl") if (out / n).exists()]
    if restart and trained:  # written only after config.json: this run trained, and lost its config.json
        raise NeuraldaError(
            f"{out} holds {', '.join(trained)} but no config.json; it cannot be resumed without it (restore it, "
            "or choose another -o)"
        )
    if restart:  # the killed run's partial writes (a split can be as big as the corpus)
        remove_partial_writes(out, out / "data")
    if not restart and holds_files(out):  # a data/train.jsonl can be the user's own too
        raise NeuraldaError(
            f"{out} is not empty and holds no run (no config.json); choose another -o, or add --resume to start "
            "again a run killed there before it wrote config.json"
        )
    poems = read_corpus(cfg.corpus)
    train_poems, val_poems = split_poems(poems, cfg.val_fraction, cfg.seed)
    counts = token_counts((p.text for p in train_poems), cfg.keep_case)
    vocab = Vocab.from_counts(counts, cfg.min_count, cfg.keep_case)
    if cfg.min_count > 1 and not any(vocab.word_mask):
        raise NeuraldaError(f"--min-count {cfg.min_count} leaves no word in the vocabulary; lower it")
    train_tokens = counts.total()  # each poem's tokens and its end, as the training stream has them
    config = cfg.resolved(train_tokens)
    build_model(config["arch"], len(vocab), config["hidden"], config["layers"], config["dropout"])  # sizes it refuses
    files = {
        out / "data" / "train.jsonl": corpus_jsonl(train_poems).encode(),
        out / "data" / "val.jsonl": corpus_jsonl(val_poems).encode(),
        out / "vocab.json": json_text(vocab.to_dict()).encode(),
    }
    # A run killed before its config.json left these as this one writes them again (the same corpus and settings);
    # a file of those names that differs is the user's (or another corpus's run's): never replaced.
    other = [path.relative_to(out).as_posix() for path, data in files.items() if not _holds(path, data)]
    if other:
        raise NeuraldaError(
            f"{out} holds {', '.join(other)}, which this run would replace with other contents (a file of yours, or a "
            "run killed there with another corpus or settings); move it away or choose another -o"
        )
    for path, data in files.items():
        atomic_write(path, data)
    write_json(out / "config.json", config)  # written last: a run directory with config.json is complete
    return Run.open(out)


def _holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` holds ``data`` or nothing yet."""
    return not os.path.lexists(path) or (path.is_file() and path.read_bytes() == data)


def _prepare_locked(cfg: TrainConfig, restart: bool, lock: Callable[[], None]) -> None:
    """``_prepare`` in the run directory made and locked first: a second `train` of it started while the first still
    reads its corpus is refused (both trained it, each logging its epochs)."""
    with made_folder(Path(cfg.output)):
        lock()
        _prepare(cfg, restart)


def _check_resumable(run: Run) -> None:
    """A run that trained has ``last`` (the optimizer and how far it got): without it, resuming would train again
    from nothing over its checkpoints and metrics."""
    saved = run.checkpoints()
    if "last" not in saved and (saved or run.metrics()):
        raise NeuraldaError(
            f"{run.path} cannot be resumed: checkpoints/last.safetensors is missing (it holds the optimizer and the "
            "epoch reached); its other checkpoints still write and evaluate"
        )


def _check_ahead(cfg: TrainConfig, run: Run) -> None:
    """``--epochs`` and new ``--save-at`` epochs given to a resume lie ahead of the epoch the run reached: epochs
    trained are not trained again, and weights not kept then cannot be saved now."""
    saved = run.checkpoints()
    reached = run.checkpoint_meta("last").get("epoch", 0) if "last" in saved else 0
    if cfg.epochs is not None and cfg.epochs < reached:
        raise NeuraldaError(f"--epochs {cfg.epochs}: {run.path} has trained {reached} epochs already; give {reached} or more")
    missed = [e for e in cfg.save_at or () if e <= reached and f"epoch-{e}" not in saved]
    if missed:
        raise NeuraldaError(
            f"--save-at {','.join(map(str, missed))}: {run.path} is past epoch {missed[-1]} (it has trained {reached}) "
            "and did not keep those weights; save epochs after it"
        )


def holds_files(out: Path) -> bool:
    """Whether the folder ``out`` holds anything but a file browser's ``OS_LITTER``."""
    return out.is_dir() and any(p.name not in OS_LITTER for p in out.iterdir())


def _foreign_files(out: Path) -> list[str]:
    """What ``out`` holds besides ``RUN_FILES``, its config.json and checkpoints, the temporary files of their
    atomic writes, and ``OS_LITTER``."""
    if not out.is_dir():
        return []
    folders = [out / name for name in ("data", "checkpoints") if (out / name).is_dir()]
    paths = [*out.iterdir(), *(p for folder in folders for p in folder.iterdir())]
    return sorted(
        n for n, name in ((p.relative_to(out).as_posix(), p.name) for p in paths)
        if n not in RUN_FILES and n != "config.json" and not CHECKPOINT_FILE.fullmatch(n)
        and not PARTIAL_WRITE.fullmatch(name) and name not in OS_LITTER
    )


def _stream(run: Run, split: str) -> torch.Tensor:
    """The split as one id tensor; each poem follows a poem break, as in writing."""
    poems = run.poems(split)
    return torch.tensor([run.vocab.stoi[POEM_END]] + run.vocab.encode_poems(p.text for p in poems), dtype=torch.long)


BEST_AT_LAST = ".best-at-last.safetensors"  # 'best' as of checkpoint 'last', kept aside by an interrupted run
CHECKPOINT_FILE = re.compile(rf"checkpoints/((best|last|epoch-\d+)\.safetensors|{re.escape(BEST_AT_LAST)})")


def _keep_best_aside(checkpoints: Path) -> None:
    """Before 'best' is replaced by weights of epochs after 'last' (Ctrl-C, or a checkpoint that writes 'best' and
    then 'last'), the older 'best' (the best up to 'last') is kept aside, so that a resume, which trains again from
    'last' and may stop before those epochs (fewer --epochs, a shorter --patience), keeps a best of its own epochs."""
    best, aside = checkpoints / "best.safetensors", checkpoints / BEST_AT_LAST
    if best.exists():  # a link, not a move: a second Ctrl-C while the new best is written leaves the old one
        aside.unlink(missing_ok=True)
        _link_or_copy(best, aside)


def _link_or_copy(path: Path, to: Path) -> None:
    """``to`` made a hard link to ``path``, or a copy of it on a file system without hard links."""
    try:
        os.link(path, to)
    except OSError:
        shutil.copyfile(path, to)


def _restore_best(checkpoints: Path, last_epoch: int) -> int | None:
    """On resume: a 'best' of an epoch after ``last_epoch`` (written at Ctrl-C, or by a checkpoint killed before its
    'last') is kept as that epoch's checkpoint, 'epoch-N', where there is none: the resume trains those epochs
    again and may stop before them, and it deletes no weights. Then the 'best' kept aside comes back where 'best'
    is of such an epoch (or cannot be read); else 'last' was written after it (a run killed just before the aside
    was removed) and it is dropped. Returns the epoch of the 'best' kept as 'epoch-N', if one was."""
    best, aside = checkpoints / "best.safetensors", checkpoints / BEST_AT_LAST
    try:
        epoch = checkpoint_meta(best).get("epoch")
    except (NeuraldaError, OSError):  # missing or unreadable: the one kept aside, where there is one, comes back
        epoch = None
    later = isinstance(epoch, int) and epoch > last_epoch
    if later and not (checkpoints / f"epoch-{epoch}.safetensors").exists():
        _link_or_copy(best, checkpoints / f"epoch-{epoch}.safetensors")
    if aside.exists():
        if later or not isinstance(epoch, int):
            os.replace(aside, best)
        else:
            aside.unlink()
    return epoch if later else None


def _truncate_logs(run_path: Path, epoch: int) -> None:
    """Keep each epoch once: drop the metrics and samples written after the checkpoint a resumed run starts from, and
    the sample of the ``last`` checkpoint, which the resumed run writes anew when it ends."""
    for path in (run_path / "metrics.jsonl", run_path / "samples.jsonl"):
        if path.exists():
            keep = [row for row in read_epoch_rows(path) if row["epoch"] <= epoch and row.get("checkpoint") != "last"]
            atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in keep))


@dataclass
class TrainResult:
    """What ``train`` did: the run directory, the epochs it reached, the best one and its held-out perplexity (None
    without held-out poems), why it stopped ("epochs", "patience" or "time"), the seconds its epochs took
    (validation, checkpoints and the last sample included) and the tokens it trained on."""

    run: Path
    epochs: int
    best_epoch: int
    best_val_ppl: float | None
    stopped: str  # "epochs" | "patience" | "time"
    loop_seconds: float  # wall time of the epochs run, validation, checkpoints and the last sample included
    tokens_trained: int


_Shared = TypeVar("_Shared", bool, float)


@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False  # this process group is ours to close (a caller's own is left open)

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: str) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            if device.startswith("cuda"):  # bound to its GPU: NCCL's barrier() would use the current one, and warn
                torch.distributed.init_process_group("nccl", device_id=torch.device(device))
            else:
                torch.distributed.init_process_group("gloo")
            self.created = True

    def close(self) -> None:
        """Close the process group this process opened, once every process has got what rank 0 sent it (without
        it, 2 of 6 gloo runs aborted at exit: "terminate called without an active exception")."""
        if self.created:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def on_main(self, work: Callable[[], None]) -> None:
        """``work`` (writing the run directory) on rank 0 alone, the others waiting for it; where it fails (an
        existing run, a full disk, a model too large for memory), every rank raises, so the job ends with rank 0's
        one line instead of the other ranks' broken collectives."""
        if self.world == 1:
            return work()
        failure: list[str | None] = [None]
        error = None
        if self.main:
            try:
                work()
            except Exception as e:  # rank 0 raises it as it is (cli.main says it, or it is a bug's traceback)
                error, failure[0] = e, str(e)
        torch.distributed.broadcast_object_list(failure, 0)
        if error is not None:
            raise error
        if failure[0] is not None:
            raise NeuraldaError(failure[0])  # not shown: rank 0 says it (cli.main)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(value)
        return value

    def agree(self, value: _Shared, device: str) -> _Shared:
        """Rank 0's ``value`` (a flag or a number) on every rank, for what each decides alone but all must decide
        alike: stopping for time (the clocks differ) and the held-out loss behind patience and the schedule (its
        last bits may differ between devices; one rank stopping early would leave the others waiting forever)."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        torch.distributed.broadcast(t, 0)
        return type(value)(t.item())


def _resumed_run(cfg: TrainConfig) -> Run:
    """The run ``cfg.output`` to resume, its settings changed in memory by those ``cfg`` gives (written once its
    checkpoint and data are read: a refused resume changes none)."""
    run = Run.open(cfg.output)
    _check_resumable(run)
    run.config.setdefault("carry_state", True)  # runs made before the setting carried their state
    run.config.setdefault("epsilon_hat", None)  # and trained with torch's Adam epsilon
    check_unchanged(cfg, run)
    _check_ahead(cfg, run)
    for key in RESUMABLE:
        value = getattr(cfg, key)
        if value is not None:
            run.config[key] = list(value) if key == "save_at" else value
    run.config["compile"] = cfg.compile
    check_setting_types(run.config, run.path / "config.json")
    # The flags a resume may change are checked as they are parsed: a value out of range here is the file's.
    check_settings(run.config, run.path / "config.json")
    return run


def _process_device(name: str, dist: Dist) -> str:
    """The device ``name`` picks for this process: under torchrun on CUDA, the GPU of its local rank."""
    device = pick_device(name)
    if dist.world > 1 and device.startswith("cuda"):
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", dist.local_rank + 1))  # every rank sees it
        if per_machine > torch.cuda.device_count():
            raise NeuraldaError(
                f"{per_machine} processes on a machine with {torch.cuda.device_count()} GPUs; start at most "
                f"--nproc_per_node {torch.cuda.device_count()}"
            )
        device = f"cuda:{dist.local_rank}"
        torch.cuda.set_device(device)
    if dist.world > 1 and device == "mps":
        raise NeuraldaError("several processes on Apple's MPS: gloo cannot add MPS tensors; train in one process")
    return device


class EpochTrained(NamedTuple):
    """What one epoch's training did (before its validation)."""

    loss: float  # the mean per token
    tokens: int
    seconds: float
    batches: int
    cut: bool  # by --max-time, part way through


class Trainer:
    """One training run: the model, its optimizer and schedule, and the epoch loop with its bookkeeping."""

    def __init__(
        self, cfg: TrainConfig, resume: bool, log: Callable[[str], None], held: contextlib.ExitStack | None = None
    ) -> None:
        """``held``, where given, holds a lock on the run directory until it closes (rank 0's): a second `train`
        of the same run, a --resume say, is refused while this one runs (the two wrote each other's epochs)."""
        self.cfg, self.started = cfg, time.monotonic()
        lock = (lambda: held.enter_context(folder_lock(Path(cfg.output)))) if held is not None else (lambda: None)
        self.dist = Dist.from_env()
        self.log = log if self.dist.main else (lambda s: None)
        restart = resume and bool(cfg.corpus) and not (Path(cfg.output) / "config.json").exists()
        why = " (killed before its config.json was written)" if restart and holds_files(Path(cfg.output)) else ""
        resume = resume and not restart
        if resume:
            self.run = _resumed_run(cfg)
        # A resume's settings are its config.json's (with the ones given changed); a new run's, these with defaults.
        settings = self.run.config if resume else asdict(cfg.with_defaults())
        device = _process_device(settings["device"], self.dist)
        # Before anything is written: a refused precision saved in config.json would refuse every resume after.
        self.precision = pick_precision(settings["precision"], device, settings["arch"])
        self.dist.init(device)
        self.dist.barrier()  # every process has looked before the first one writes
        if resume:  # the partial files of the writes a kill cut short (a checkpoint each) would pile up, kill by kill
            self.dist.on_main(lock)
            path = self.run.path
            self.dist.on_main(functools.partial(remove_partial_writes, path, path / "data", path / "checkpoints"))
        else:
            self.dist.on_main(lambda: _prepare_locked(cfg, restart, lock))
            if restart:  # said once it has started: a bad corpus is its one line, not this and then that
                self.log(f"{cfg.output} held no run yet{why}: started it")
            self.run = Run.open(cfg.output)
        c = self.c = self.run.config
        self.device = device
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(torch_seed(c["seed"]))
        self.model = self.run.build_model().to(device)
        self.optimizer = make_optimizer(self.model, c)
        self.params = list(self.model.parameters())  # once: each listing walks the modules (~0.1 ms a step)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=0, threshold=PLATEAU_THRESHOLD
        )
        # Several processes: gradients are averaged across them after each backward (DistributedDataParallel).
        self.trained = LossModule(self.model, self.precision)
        if c["compile"]:
            self.trained = torch.compile(self.trained)  # optional: on CPU it measured slower (docs/performance.md)
        if self.dist.world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(self.trained)
        ids = _stream(self.run, "train")
        self.train_ids = (ids.pin_memory() if device.startswith("cuda") else ids).to(device, non_blocking=True)
        # Words seen once in training: the ones a held-out poem's unknown words are most like.
        counts = torch.bincount(self.train_ids, minlength=len(self.run.vocab))
        self.rare = counts[self.train_ids] == 1
        self.val_ids = _stream(self.run, "val").to(device)  # on the device once, not a chunk at a time
        # Scored in float32 (with training's TF32 products on a GPU, see evaluate._full_float32), but in bf16 where a
        # CPU trains in bf16: there float32 products run at a seventh of bf16's speed or less (0.25 TFLOP/s against
        # 0.7-1.7), and validating the seed's model took 1.2-1.7 s of a 12-23 s epoch against 0.5-1.0 in bf16; its
        # perplexity moved 0.06-0.33% (our lstm's 0.01%). The checkpoint records which, and `evaluate` measures it the
        # same way: one number per checkpoint. Each process reads its share of the streams.
        self.val_precision = "bf16" if self.precision == "bf16" and device == "cpu" else "fp32"
        share = (self.dist.rank, self.dist.world)
        scored_in = "bf16" if self.val_precision == "bf16" else "tf32"
        self.score_val = HeldoutScorer(self.model, self.val_ids, scored_in, share, graph=True)
        self.state = {
            "epoch": 0, "step": 0, "best_val": None, "best_epoch": 0, "bad_epochs": 0, "last_val": None,
            "plateau_val": None,  # the held-out loss the last real gain reached (see PLATEAU_THRESHOLD)
        }
        if resume and "last" in self.run.checkpoints():
            self._load_last()
        else:
            if resume:  # killed before its first checkpoint: nothing was trained yet
                self.log(f"{self.run.path} has no checkpoint yet: starting from the beginning")
            # Epoch 0: a run killed in its first epoch can resume too.
            self.dist.on_main(lambda: self._save("last", with_optimizer=True))
        if resume:  # the settings it changed, once its checkpoint and data were read: a refused one changes none
            self.dist.on_main(lambda: write_json(self.run.path / "config.json", self.run.config))
        past = [str(e) for e in c["save_at"] if e > c["epochs"]]
        if past:
            self.log(f"note: --save-at {','.join(past)} is past --epochs {c['epochs']}: saved if a --resume gets there")
        self.saved = {"epoch": self.state["epoch"], "at": time.monotonic()}  # the last checkpoint on disk
        self.best: tuple[dict, dict] | None = None  # the best weights and meta not yet on disk
        self.save_every = SAVE_EVERY if c.get("save_every") is None else c["save_every"]

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def _meta(self) -> dict:
        return {
            "epoch": self.state["epoch"], "arch": self.c["arch"], "val_loss": self.state["last_val"],
            "val_precision": self.val_precision,
        }

    def _save(self, name: str, with_optimizer: bool = False) -> None:
        tensors, meta = model_tensors(self.model), self._meta()
        if with_optimizer:
            opt_tensors, groups = optimizer_tensors(self.optimizer)
            tensors = {**tensors, **opt_tensors}
            meta.update(trainer=self.state, param_groups=groups, scheduler=self.scheduler.state_dict())
        save_checkpoint(self.run.path / "checkpoints" / f"{name}.safetensors", tensors, meta)

    def _checkpoint(self) -> None:
        """Write the best weights held back since the last checkpoint, then ``last`` (in that order: a run killed
        in between resumes from the older ``last`` and writes ``best`` again when it gets there). Until ``last`` is
        written the older 'best' is kept aside, as on Ctrl-C: a resume that stops before the newer one's epoch (fewer
        --epochs, a shorter --patience) puts it back."""
        if self.best is not None:
            self._write_best()
        self._save("last", with_optimizer=True)
        (self.run.path / "checkpoints" / BEST_AT_LAST).unlink(missing_ok=True)
        self.saved = {"epoch": self.state["epoch"], "at": time.monotonic()}

    def _write_best(self) -> None:
        """Write the best weights held back since the last checkpoint, the older 'best' kept aside until ``last``
        is written (``_keep_best_aside``)."""
        checkpoints = self.run.path / "checkpoints"
        _keep_best_aside(checkpoints)
        try:
            save_checkpoint(checkpoints / "best.safetensors", *self.best)
        except NeuraldaError:  # not written (a full disk): 'best' is as it was, the copy aside not needed
            (checkpoints / BEST_AT_LAST).unlink(missing_ok=True)
            raise  # (a second Ctrl-C may come once the new 'best' is in place: the older one stays aside)
        self.best = None

    def _load_last(self) -> None:
        path = self.run.checkpoint_path("last")
        tensors, meta = read_checkpoint(path)
        load_model_tensors(self.model, tensors, path)
        if "trainer" not in meta:
            raise NeuraldaError(f"{path}: holds no trainer state; cannot resume")
        optim = {k: v.to(self.device) for k, v in tensors.items() if k.startswith("optim/")}
        trainer = meta["trainer"]
        try:  # a header without its checksum (as before there was one) may hold anything
            if not isinstance(trainer, dict) or not set(trainer) <= set(self.state):  # older runs' have fewer keys
                raise TypeError("not the trainer's state")
            counts = [trainer.get(k, 0) for k in ("epoch", "step", "best_epoch", "bad_epochs")]
            if not all(_whole(n) and n >= 0 for n in counts):
                raise TypeError("its counts are not whole numbers")
            losses = [trainer.get(k) for k in ("best_val", "last_val", "plateau_val")]
            if not all(loss is None or json_like(loss, 0.0) for loss in losses):
                raise TypeError("its held-out losses are not numbers")
            if not json_like(meta["param_groups"], self.optimizer.state_dict()["param_groups"]):
                raise TypeError("its optimizer settings are not of their kinds")
            if not json_like(meta["scheduler"], self.scheduler.state_dict()):
                raise TypeError("its schedule is not of its kinds")
            load_optimizer(self.optimizer, optim, meta["param_groups"])
            self.scheduler.load_state_dict(meta["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise NeuraldaError(f"{path}: damaged checkpoint (its trainer state cannot be resumed: {e})") from None
        self.state.update(trainer)
        def restore_best() -> None:
            kept = _restore_best(self.run.path / "checkpoints", self.state["epoch"])
            if kept:
                self.log(f"the interrupted run's best weights, of epoch {kept}, are kept as checkpoint 'epoch-{kept}'")

        self.dist.on_main(restore_best)
        self.dist.on_main(functools.partial(_truncate_logs, self.run.path, self.state["epoch"]))
        self.log(f"resuming {self.run.path} after epoch {self.state['epoch']}")

    # --- one epoch -----------------------------------------------------------------------------------------------

    def _epoch_ids(self, epoch: int) -> torch.Tensor:
        """The training stream of ``epoch``: with ``unk_rate``, each word seen once is read as ``<unk>`` with that
        probability, so the model learns how likely an unknown word is (held-out poems have them; the seed's model
        never sees ``<unk>`` and pays for every one)."""
        rate = self.c["unk_rate"]
        if not rate:
            return self.train_ids
        g = torch.Generator().manual_seed(torch_seed(self.c["seed"] * 1_000_033 + epoch))
        drop = self.rare & (torch.rand(self.train_ids.shape, generator=g) < rate).to(self.train_ids.device)
        return self.train_ids.masked_fill(drop, self.run.vocab.unk)

    def _train_epoch(self, epoch: int, progress: Progress) -> EpochTrained:
        """Train one epoch."""
        c, model = self.c, self.trained
        # Dropout masks from a seed per epoch and rank: a resumed run draws what an uninterrupted one would.
        torch.manual_seed(torch_seed(c["seed"] * 1_000_003 + epoch * 7_919 + self.dist.rank))
        model.train()
        total = torch.zeros((), device=self.device)
        tokens = 0
        hidden = None
        t0 = last_report = time.monotonic()
        ids = self._epoch_ids(epoch)
        done, cut = 0, False
        for done, (x, y, reset, weight) in enumerate(batches(ids, c, epoch, self.dist.rank, self.dist.world), 1):
            self.optimizer.zero_grad(set_to_none=True)  # before the forward: the last step's gradients go first
            groups = row_groups(len(x), c["seq_len"], self.device)  # from the run's seq_len: the same rows each batch
            states = [None] * groups if reset or hidden is None else hidden
            loss, hidden = 0, []
            for i, (xg, yg) in enumerate(zip(x.tensor_split(groups), y.tensor_split(groups))):
                # Several processes average their gradients once, after the last group's backward.
                alone = self.dist.world == 1 or i == groups - 1
                with contextlib.nullcontext() if alone else model.no_sync():
                    with autocast(self.device, self.precision):
                        group_loss, state = model(xg, yg, states[i], weight)
                    group_loss.backward()
                loss += group_loss.detach()
                hidden.append(state)
            if c["clip_value"]:
                torch.nn.utils.clip_grad_value_(self.params, c["clip_value"])
            if c["clip_norm"]:
                clip_grad_norm([p.grad for p in self.params if p.grad is not None], c["clip_norm"])
            self.optimizer.step()
            if c["stateful"]:
                hidden = [[(h.detach(), s.detach()) for h, s in state] for state in hidden]
            if weight:
                total += loss / weight  # summed on the device: no host sync per step
                tokens += y.numel()
            now = time.monotonic()
            # An epoch longer than the budget (a big corpus's first) ends at it, then validates and saves as any;
            # several processes agree on it every 8 batches, not at a host sync each.
            out_of_time = c["max_time"] and (self.dist.world == 1 or done % 8 == 0)
            if out_of_time and self.dist.agree(now - self.started > c["max_time"], self.device):
                cut = True
                break
            if progress.tty and now - last_report > 1.0:  # a host sync, so only once a second
                progress.step(done, float(total) / tokens, tokens * self.dist.world / (now - t0))  # the job's, about
                last_report = now
        # Summed apart: as float32, a count over 2**24 tokens was rounded.
        tokens = int(self.dist.sum(torch.tensor(tokens, dtype=torch.int64, device=self.device)))
        return EpochTrained(float(self.dist.sum(total)) / max(tokens, 1), tokens, time.monotonic() - t0, done, cut)

    def _end_epoch(self, epoch: int, trained: EpochTrained, t0: float) -> dict:
        """Validate, schedule, save and log after an epoch; returns its metrics row."""
        c, state = self.c, self.state
        if not math.isfinite(trained.loss):
            if self.dist.main:  # the run directory as a resume would see it: up to the last checkpoint
                _truncate_logs(self.run.path, self.saved["epoch"])
            raise NeuraldaError(
                f"the training loss became {trained.loss} in epoch {epoch}; the checkpoints of epoch "
                f"{self.saved['epoch']} are kept in {self.run.path / 'checkpoints'} (start a new run with a lower --lr)"
            )
        val_loss, val_start = None, time.monotonic()
        if self.val_ids.numel() > 1:
            nll, count = self.score_val()
            if self.dist.world > 1:
                nll, count = self.dist.sum(torch.tensor([nll, count], dtype=torch.float64, device=self.device)).tolist()
            val_loss = self.dist.agree(nll / count, self.device)
        val_seconds = time.monotonic() - val_start
        state["epoch"], state["last_val"] = epoch, val_loss
        state["step"] += trained.batches
        is_best = val_loss is None or state["best_val"] is None or val_loss < state["best_val"]
        if is_best:
            state["best_val"], state["best_epoch"] = val_loss, epoch
        # Patience counts the epochs the schedule counts: a gain too small to keep the rate (a vanishing rate makes
        # many) must not keep a run going at a rate of 1e-8 for a third of its epochs.
        mark = state["plateau_val"]
        if val_loss is None or mark is None or val_loss < mark * (1 - PLATEAU_THRESHOLD):
            state["plateau_val"], state["bad_epochs"] = val_loss, 0
        else:
            state["bad_epochs"] += 1
        lr = self.optimizer.param_groups[0]["lr"]  # the epoch's rate, before the schedule sets the next one's
        if c["schedule"] == "plateau" and val_loss is not None:
            self.scheduler.step(val_loss)
        row = {
            "epoch": epoch,
            "step": state["step"],
            "train_loss": round(trained.loss, 5),
            "train_ppl": _json_number(perplexity(trained.loss, 1)),
            "val_loss": None if val_loss is None else round(val_loss, 5),
            "val_ppl": None if val_loss is None else _json_number(perplexity(val_loss, 1)),
            "tokens_per_s": round(trained.tokens / trained.seconds, 1),
            "device": self.device,  # what "auto" chose, for this invocation: a resume may train elsewhere
            "precision": self.precision,
            "lr": lr,
            "seconds": 0.0,
            "val_seconds": round(val_seconds, 3),
            "best": is_best,
            "cut": trained.cut,  # by --max-time, part way through: a resume starts the next epoch
        }
        self.dist.on_main(lambda: self._record(row, t0))
        return row

    def _record(self, row: dict, t0: float) -> None:
        """Rank 0's part of an epoch's end: hold the best weights, save the epoch if asked, log, checkpoint."""
        epoch, save_at = row["epoch"], self.c["save_at"]
        if row["best"]:  # held in memory until the next checkpoint: writing 64 MB a time costs GPU runs most
            self.best = {k: v.detach().clone() for k, v in model_tensors(self.model).items()}, self._meta()
        if epoch in save_at:
            self._save(f"epoch-{epoch}")
            _write_sample(self.run, self.model, epoch)
        row["seconds"] = round(time.monotonic() - t0, 3)
        append_line(self.run.path / "metrics.jsonl", json.dumps(row))
        # After the metrics: a run killed in between redoes the epochs since the last checkpoint.
        if epoch in save_at or time.monotonic() - self.saved["at"] >= self.save_every:
            self._checkpoint()

    # --- the loop ------------------------------------------------------------------------------------------------

    def _finish(self) -> None:
        """Rank 0's part of a run's end: the last checkpoint and the sample of "last" (also when no epoch was left
        to train: resuming dropped the sample, see _truncate_logs)."""
        if self.state["epoch"] > self.saved["epoch"]:
            self._checkpoint()
        if self.state["epoch"] not in self.c["save_at"]:
            _write_sample(self.run, self.model, self.state["epoch"], checkpoint="last")

    def fit(self) -> TrainResult:
        c, state = self.c, self.state
        progress = Progress(self.cfg.progress and self.dist.main, c["epochs"], batch_count(self.train_ids.numel(), c))
        stopped, epoch_seconds, tokens_trained = "epochs", [], 0
        loop_start = time.monotonic()
        self.log(
            f"training {c['arch']} ({sum(p.numel() for p in self.model.parameters()):,} parameters, vocabulary "
            f"{len(self.run.vocab):,}) on {self.train_ids.numel():,} tokens, {self.device} {self.precision}"
            + (f", {self.dist.world} processes" if self.dist.world > 1 else "")
        )
        try:
            while state["epoch"] < c["epochs"]:
                if c["patience"] and state["bad_epochs"] >= c["patience"]:
                    stopped = "patience"
                    break
                elapsed = time.monotonic() - self.started
                out_of_time = bool(c["max_time"] and epoch_seconds and elapsed + epoch_seconds[-1] > c["max_time"])
                if self.dist.agree(out_of_time, self.device):
                    stopped = "time"
                    break
                epoch = state["epoch"] + 1
                t0 = time.monotonic()
                progress.start_epoch(epoch)
                trained = self._train_epoch(epoch, progress)
                tokens_trained += trained.tokens
                row = self._end_epoch(epoch, trained, t0)
                epoch_seconds.append(time.monotonic() - t0)
                left = (c["epochs"] - epoch) * (sum(epoch_seconds) / len(epoch_seconds))
                if c["max_time"]:
                    left = min(left, c["max_time"] - (time.monotonic() - self.started))
                progress.end_epoch(row, left)
                if trained.cut:  # the last epoch too: it did not train all its batches
                    stopped = "time"
                    break
        except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or the log's reader went away (`2>&1 | head`)
            best = ""
            if self.dist.main and self.best is not None:  # a whole epoch's weights: the run has a model to write with
                best = f" (its best weights so far, of epoch {self.best[1]['epoch']}, are in checkpoint 'best')"
                self._write_best()
            with contextlib.suppress(BrokenPipeError):
                progress.close()
                self.log(
                    f"\ninterrupted: {self.run.path} holds epoch {self.saved['epoch']}{best}; continue with --resume"
                )
            raise
        except Exception as e:
            if not (c["compile"] and type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))):
                raise
            # torch.compile compiles at the first step: a machine without a C++ compiler (or Triton) fails there.
            detail = next((line for line in str(e).splitlines() if line.strip()), "")
            raise NeuraldaError(
                f"--compile failed ({type(e).__name__}: {detail}); continue without it: neuralda train -o "
                f"{self.run.path} --resume"
            ) from None
        self.dist.on_main(self._finish)
        loop_seconds = time.monotonic() - loop_start
        best_ppl = None if state["best_val"] is None else perplexity(state["best_val"], 1)
        self.log(
            f"done after {state['epoch']} epoch{'' if state['epoch'] == 1 else 's'} ({stopped}); best epoch "
            f"{state['best_epoch']}"
            + (f", val ppl {format_ppl(best_ppl)}" if best_ppl is not None else "")
        )
        return TrainResult(self.run.path, state["epoch"], state["best_epoch"], best_ppl, stopped, loop_seconds, tokens_trained)


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a model into ``cfg.output`` (or continue the run there with ``resume``).

    ``log`` takes each line of progress (default: stderr; ``cfg.progress`` adds a bar on a terminal). While it runs,
    SIGTERM stops it as Ctrl-C does (writing the best weights); torch's random generator and settings are the
    caller's again after. Under ``torchrun`` each process trains on its slice of every batch and rank 0 alone writes
    the run directory.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = cfg.checked()  # before anything is written
    with _sigterm_as_interrupt(), _torch_state_kept(), contextlib.ExitStack() as held:
        trainer = Trainer(cfg, resume, log, held)
        with _keep_freed_memory(trainer.device):
            result = trainer.fit()
        dist = trainer.dist
        # The model's DistributedDataParallel wrapper goes before its process group: left to the exit, a gloo thread
        # it held was still joinable and the process aborted ("terminate called without an active exception": 8 of
        # 37 two-process runs on a busy CPU; 0 of 44 so).
        del trainer
        gc.collect()
        dist.close()
    return result


@contextlib.contextmanager
def _torch_state_kept():
    """Training seeds torch's generators (each epoch: a resumed run draws as an uninterrupted one) and turns TF32 on
    for CUDA's products: the caller's generators (a GPU's where the caller has used one) and settings come back."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)


@contextlib.contextmanager
def _keep_freed_memory(device: str):
    """Have glibc keep the memory freed while training on ``device``, a CPU, for the next step to reuse, and give it
    back after.

    By default glibc hands each large buffer back to the system when it is freed, so every step faults its pages in
    afresh (15-27% of a bare loop's CPU time went to the kernel on our machines). Kept, the seed's steps ran 10%
    faster in bf16 (2.7 s against 3.1) and 5% in float32, our lstm's epochs 20%, for 130-250 MB more peak memory.
    Elsewhere than glibc, or on another device: as it is."""
    try:
        libc = ctypes.CDLL(None) if device == "cpu" else None
    except (OSError, TypeError):  # Windows: no C library of the process's own to open
        libc = None
    if not hasattr(libc, "gnu_get_libc_version"):
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        # Where glibc's own sliding thresholds end after a few large buffers (mallopt stops them sliding): back to
        # its 128 KB start, a bare loop run after training in the same process was 20% slower (5,900-6,000 tokens/s
        # for our lstm against 7,500-7,700).
        libc.mallopt(M_MMAP_MAX, 65536)
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)
        libc.malloc_trim(0)  # the memory kept, back to the system


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's time limit, `timeout`) stops training as Ctrl-C does, writing the best weights held in
    memory. Not under torchrun: a worker waiting in a collective for a dead one takes a Python handler only when
    the wait ends (37 s, where the default handler stops it at once); only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread() or Dist.from_env().world > 1:
        yield
        return

    def interrupt(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _json_number(value: float) -> float | None:
    """``value`` rounded, or None where strict JSON has no number for it (an overflowing perplexity)."""
    return round(value, 3) if math.isfinite(value) else None


def _write_sample(run: Run, model, epoch: int, checkpoint: str | None = None) -> None:
    """A poem from "love" (or from a poem break when the corpus lacks the word), for the report."""
    start = default_start(run.vocab)
    try:
        poem, _ = write_poems(model, run.vocab, start, words=80, n=1, seed=SAMPLE_SEED)[0]
    except NoDistribution:  # a loss still finite (1e26 at --lr 1e5) from scores that overflow
        raise NeuraldaError(
            f"after epoch {epoch} the model's next-word scores overflow: the training diverged; start a new run with "
            "a lower --lr"
        ) from None
    model.train()
    row = {"epoch": epoch, "checkpoint": checkpoint or f"epoch-{epoch}", "start": start, "seed": SAMPLE_SEED, "poem": poem}
    append_line(run.path / "samples.jsonl", json.dumps(row, ensure_ascii=False))
