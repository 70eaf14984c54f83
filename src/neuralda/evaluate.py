"""Measures: held-out perplexity, and (with generated poems) how much they copy and how diverse they are."""

from __future__ import annotations

import contextlib
import math

import torch
from torch.nn import functional as F

EVAL_STREAMS = 16  # held-out text is read as 16 parallel streams, the state carried along each
EVAL_CHUNK = 128


def autocast(device: str, precision: str):
    """The autocast context for ``precision`` ("bf16" or "fp32") on ``device``."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def token_nll(model, ids: torch.Tensor, precision: str = "fp32") -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of ``ids[1:]`` given what precedes them, and how many were scored.

    The stream is cut into ``EVAL_STREAMS`` parallel streams read in chunks with the recurrent state carried, so
    every model is measured the way it writes: one long context, not windows.
    """
    n = ids.numel() - 1
    if n < 1:
        return 0.0, 0
    streams = max(1, min(EVAL_STREAMS, n // EVAL_CHUNK))
    length = n // streams
    x = ids[: streams * length].view(streams, length)
    y = ids[1 : streams * length + 1].view(streams, length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    with autocast(str(device), precision):
        for i in range(0, length, EVAL_CHUNK):
            xb = x[:, i : i + EVAL_CHUNK].to(device, non_blocking=True)
            yb = y[:, i : i + EVAL_CHUNK].to(device, non_blocking=True)
            logits, state = model(xb, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum").double()
    model.train(was_training)
    return float(total), streams * length


def perplexity(nll: float, count: int) -> float:
    """exp(mean NLL), or inf when nothing was scored or it overflows."""
    if count == 0:
        return math.inf
    mean = nll / count
    return math.exp(mean) if mean < 700 else math.inf
