"""A small decoder-only transformer (after nanoGPT) with rotary positions and a sliding key/value cache.

Like the LSTMs it maps token ids ``(B, T)`` and a state to logits ``(B, T, V)`` and the next state; the state is
the key/value cache, so generation feeds one token at a time and evaluation reads long text in chunks. In every
layer a token attends to itself and the ``block_size - 1`` tokens before it, whether they come in this call or from
the cache (a sliding window, as in Longformer and Mistral: the layers together see further back), so one long call
and many short ones give the same logits on text of any length.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import NeuraldaError
from . import embedding, normal_, packed_matmul, packed_products, same_alone_as_in_pairs

BLOCK_SIZE = 128  # tokens of context; the recipe trains on windows of this length
HEAD_SIZE = 64  # units per attention head: --hidden 256 gives 4 heads

# Per layer: keys (before rotation) and values of the last block_size - 1 tokens, (B, heads, positions, head size).
KVCache = list[tuple[Tensor, Tensor]]
SummaryRow = tuple[str, str, int]


@dataclass
class GPTConfig:
    """Sizes and regularisation of one GPT; ``n_head`` must split ``n_embd`` into heads of an even size (RoPE)."""

    vocab_size: int
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    block_size: int = BLOCK_SIZE
    dropout: float = 0.2
    rope_base: float = 10_000.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or self.n_embd // self.n_head % 2:
            raise NeuraldaError(
                f"--hidden {self.n_embd} does not split into {self.n_head} attention heads of an even size "
                f"(use a multiple of {HEAD_SIZE})"
            )


def heads(width: int) -> int:
    """Attention heads for a model ``width`` units wide: one per ``HEAD_SIZE`` units, at least one."""
    return max(1, width // HEAD_SIZE)


def default_sizes(train_tokens: int) -> tuple[int, int]:
    """(width, layers) from the corpus size: 2 x 128 below 30k tokens, 4 x 256 up to 300k, then 6 x 384."""
    if train_tokens < 30_000:
        return 128, 2
    if train_tokens < 300_000:
        return 256, 4
    return 384, 6


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + d/2) of ``x`` (B, H, T, d) by each position's angles (GPT-NeoX layout)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def window_mask(queries: int, keys: int, block_size: int, device: torch.device) -> Tensor | None:
    """Which keys each of the last ``queries`` positions sees: itself and the ``block_size - 1`` before it.

    ``None`` when that is plain causal attention over the call (no cache, a short call) or every key (one step).
    """
    past = keys - queries
    if keys <= block_size and (past == 0 or queries == 1):
        return None
    q = torch.arange(past, keys, device=device)[:, None]
    k = torch.arange(keys, device=device)[None, :]
    return (k <= q) & (k > q - block_size)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout, self.keep = cfg.n_head, cfg.dropout, cfg.block_size - 1
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        # Keys are cached unrotated and rotated from the window's start on each call: RoPE scores depend only on
        # the distance between tokens (Su et al. 2021), so positions stay below block_size + T on endless text.
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = rotate(q, cos[-T:], sin[-T:])
        y = F.scaled_dot_product_attention(
            q,
            rotate(k, cos, sin),
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and k.size(2) == T,
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        start = max(0, k.size(2) - self.keep)
        return self.resid_drop(self.proj(y)), (k[:, :, start:], v[:, :, start:])


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm: each sublayer reads a normalised copy and adds to the residual stream (Xiong et al. 2020; GPT-2)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = MLP(cfg)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, cache = self.attn(self.ln_1(x), cos, sin, mask, cache)
        x = x + a
        return x + self.mlp(self.ln_2(x)), cache


class GPT(nn.Module):
    """Token embedding -> pre-norm transformer blocks -> LayerNorm -> output layer tied to the embedding."""

    arch = "gpt"
    state_batch_dim = 0  # each block's keys and values are (B, heads, T, head size)

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.decoder.weight = self.wte.weight  # tying (Press & Wolf 2017): the embedding is the output layer too
        half = cfg.n_embd // cfg.n_head // 2
        # Made on the CPU (.to() moves it) even where the model is built on the meta device, whose arange imports
        # torch's compiler (see models.normal_).
        inv_freq = cfg.rope_base ** (-torch.arange(half, dtype=torch.float32, device="cpu") / half)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                normal_(module.weight, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                # GPT-2 (Radford et al. 2019): residual projections scaled by 1/sqrt(2 * layers), one per sublayer.
                normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def features(self, x: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """What the output layer reads ``(B, T, n_embd)``, and the next state."""
        T = x.size(1)
        past = 0 if state is None else state[0][0].size(2)
        angles = torch.arange(past + T, device=x.device, dtype=torch.float32)[:, None] * self.inv_freq
        cos, sin = angles.cos(), angles.sin()
        mask = window_mask(T, past + T, self.cfg.block_size, x.device)
        h = self.drop(self.wte(x))
        new_state: KVCache = []
        for i, block in enumerate(self.blocks):
            h, cache = block(h, cos, sin, mask, None if state is None else state[i])
            new_state.append(cache)
        return self.ln_f(h), new_state

    def forward(self, x: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        h, state = self.features(x, state)
        return self.decoder(h), state

    def summary_rows(self) -> list[SummaryRow]:
        """Keras-style rows: name (type), output shape, parameters."""
        width, vocab = self.cfg.n_embd, self.cfg.vocab_size
        rows = [("embedding (Embedding)", f"(None, None, {width})", self.wte.weight.numel())]
        for i, block in enumerate(self.blocks):
            name = "block" if i == 0 else f"block_{i}"
            params = sum(p.numel() for p in block.parameters())
            rows.append((f"{name} (Block, {self.cfg.n_head} heads)", f"(None, None, {width})", params))
        rows.append(("layer_norm (LayerNorm)", f"(None, None, {width})", self.ln_f.weight.numel()))
        rows.append(("dense (Dense, tied)", f"(None, None, {vocab})", 0))  # its weight is the embedding
        return rows


class _PackedLinear(nn.Module):
    """A bias-free linear layer as a oneDNN product packed once (``models.packed_matmul``); float32 out."""

    def __init__(self, weight: Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.matmul = packed_matmul(weight, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.matmul(x.flatten(0, -2)).float().unflatten(0, x.shape[:-1])


class GPTSteps:
    """One-token steps of a GPT for writing on a CPU: a copy of it whose linear layers are oneDNN products packed
    once for 32 rows, in bfloat16 or float32, as ``LSTMSteps`` does for an LSTM. MKL's products for fewer than 16
    rows round otherwise than a batch's, so a poem written alone differed from the same poem in a batch at every step;
    packed, each row gets the same bits in any batch (``batch_invariant``: checked for each product when built)."""

    state_batch_dim = GPT.state_batch_dim

    def __init__(self, model: GPT, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self.model = copy.deepcopy(model).eval()
        self.batch_invariant = packed_products(dtype)
        for module in list(self.model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    packed = _PackedLinear(child.weight, dtype)
                    self.batch_invariant &= same_alone_as_in_pairs(packed.matmul, child.in_features)
                    setattr(module, name, packed)

    @torch.no_grad()
    def __call__(self, x: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        return self.model(x, state)
