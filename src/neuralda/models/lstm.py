"""Word-level LSTM language models: the seed's Keras model, Thoutt's got-book-6, and our default.

Every model maps token ids ``(B, T)`` and a recurrent state to logits ``(B, T, V)`` and the next state, so training
can carry state across batches and generation can feed one token at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import embedding, packed_matmul, packed_products, same_alone_as_in_pairs

State = list[tuple[Tensor, Tensor]]
SummaryRow = tuple[str, str, str, int]


class SingleBiasLSTM(nn.LSTM):
    """A one-layer LSTM with one bias per gate, as in Keras and TensorFlow (PyTorch's carries two).

    The second bias stays in the cuDNN/oneDNN call as a zero buffer that is not a parameter, so the fused kernels
    still run and the parameter count is Keras' own: 4 * (units * (input + units) + units).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size, batch_first=True)
        del self.bias_hh_l0
        self.register_buffer("bias_hh_l0", torch.zeros(4 * hidden_size), persistent=False)
        self._init_flat_weights()


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by every time step (Gal & Ghahramani 2016; Keras RNN dropout)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


def _keras_lstm_init(lstm: nn.LSTM, forget_bias: float = 1.0) -> None:
    """Keras defaults: glorot-uniform kernel, orthogonal recurrent kernel, zero bias with forget gate 1.

    Each bias gets it: one bias in Keras' single-bias LSTM (seed, thoutt), so the forget gate starts at 1; PyTorch's
    two-bias LSTM (our lstm) adds both, 2. We keep 2 there: on the six corpora our lstm reached held-out perplexity
    141.2 after 12 epochs with a forget bias of 1 against 136.4 with 2 (153.5 against 143.1 after 9).
    """
    h = lstm.hidden_size
    for name, p in lstm.named_parameters():
        if name.startswith("weight_ih"):
            nn.init.xavier_uniform_(p)
        elif name.startswith("weight_hh"):
            nn.init.orthogonal_(p)
        elif name.startswith("bias"):
            nn.init.zeros_(p)
            with torch.no_grad():
                p[h : 2 * h] = forget_bias


def _tf1_basic_lstm_init(lstm: nn.LSTM) -> None:
    """TF 1.0's BasicLSTMCell: one "weights" matrix over [input, h] -> 4 * units with get_variable's default
    (glorot-uniform over fan_in = input + units, fan_out = 4 * units; no orthogonal recurrent kernel), "biases" at 0
    and forget_bias=1.0 added at run time (the same as a forget-gate bias starting at 1)."""
    h = lstm.hidden_size
    limit = math.sqrt(6 / (lstm.input_size + h + 4 * h))
    with torch.no_grad():
        lstm.weight_ih_l0.uniform_(-limit, limit)
        lstm.weight_hh_l0.uniform_(-limit, limit)
        lstm.bias_ih_l0.zero_()
        lstm.bias_ih_l0[h : 2 * h] = 1.0


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class StackedLSTM(nn.Module):
    """Embedding -> LSTM layers -> dense over the vocabulary; subclasses choose the dropouts and the init."""

    arch = ""
    state_batch_dim = 1  # each layer's state is nn.LSTM's (h, c), (1, B, H) each

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.vocab_size, self.embed_size, self.hidden_size = vocab_size, embed, hidden
        self.embedding = embedding(vocab_size, embed)
        sizes = [embed] + [hidden] * layers
        self.lstms = nn.ModuleList(self._make_lstm(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.decoder = nn.Linear(hidden, vocab_size)

    def _make_lstm(self, input_size: int, hidden_size: int) -> nn.LSTM:
        return SingleBiasLSTM(input_size, hidden_size)

    def _embed(self, x: Tensor) -> Tensor:
        return self.embedding(x)

    def _between(self, i: int, x: Tensor) -> Tensor:
        """Applied to the input of LSTM layer ``i`` (and, with ``i == len(lstms)``, to the last output)."""
        return x

    def features(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """What the output layer reads ``(B, T, H)``, and the next state."""
        h = self._embed(x)
        new_state: State = []
        for i, lstm in enumerate(self.lstms):
            h, s = lstm(self._between(i, h), None if state is None else state[i])
            new_state.append(s)
        return self._between(len(self.lstms), h), new_state

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        h, state = self.features(x, state)
        return self.decoder(h), state

    def summary_rows(self) -> list[SummaryRow]:
        """Keras-style rows: name (type), output shape, parameters."""
        rows = [("embedding (Embedding)", f"(None, None, {self.embed_size})", _count(self.embedding))]
        for i, lstm in enumerate(self.lstms):
            name = "lstm" if i == 0 else f"lstm_{i}"
            rows.append((f"{name} (LSTM)", f"(None, None, {lstm.hidden_size})", _count(lstm)))
        rows.append(("dense (Dense)", f"(None, None, {self.vocab_size})", _count(self.decoder)))
        return rows


class LSTMSteps:
    """One-token steps of a stacked LSTM for writing on a CPU: its matrices packed once for oneDNN, in bfloat16 or
    float32, the biases added inside them; the gates and cells in float32. Built from an ``eval()`` model: dropout is
    off when writing.

    A one-token step reads every weight once and does little else: the seed's 36 MB of float32 weights take
    1.8 ms a step packed on our 2-core CPUs (more than their 32 MB cache; nn.LSTM's own step 3.7 ms), its 18 MB of
    bfloat16 ones 0.4-0.5 ms on a quiet day (1.0-1.5 on a busy one). Around the products, a step of 32 poems spent as
    long again converting and adding: with the biases inside the products and each layer's output kept in ``dtype``
    it took 1.5-2.2 ms against 2.4-3.0 before (three alternated runs on one busy day). Each row's result must not
    depend on the batch, so that a poem is the same written alone or with others: oneDNN's products packed for 32 rows
    gave the same bits at every batch size we measured (packed for one row, a lone float32 row took another kernel);
    where a lone row's bits differ from a pair's on this machine, a lone poem is written as a pair.
    """

    state_batch_dim = 0  # each layer's (h, c) is (B, H)

    def __init__(self, model: StackedLSTM, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        # Each layer's input and output are rounded to ``dtype`` once, where the next product reads them.
        self.embedding = model.embedding.weight.detach().to(dtype)
        # The gates reordered from PyTorch's i, f, g, o to i, f, o, g: one sigmoid then covers three of them (at 32
        # rows the cell's float32 steps took 0.089 ms a layer here against 0.124 in nn.LSTM's order).
        order = [torch.cat([q * m.hidden_size + torch.arange(m.hidden_size) for q in (0, 1, 3, 2)]) for m in model.lstms]
        weights = [torch.cat([m.weight_ih_l0, m.weight_hh_l0], 1)[o] for m, o in zip(model.lstms, order)]
        biases = [(m.bias_ih_l0 + m.bias_hh_l0)[o] for m, o in zip(model.lstms, order)]
        matmuls = [packed_matmul(w, dtype, b) for w, b in zip(weights, biases)]
        self.layers = [(f, m.hidden_size) for f, m in zip(matmuls, model.lstms)]
        self.decoder = packed_matmul(model.decoder.weight, dtype, model.decoder.bias)
        # A lone poem is written as a pair where one row would get other bits than in a batch.
        columns = [w.size(1) for w in weights] + [model.decoder.in_features]
        alone_ok = all(same_alone_as_in_pairs(f, n) for f, n in zip([*matmuls, self.decoder], columns))
        self.min_rows = 1 if alone_ok else 2
        self.batch_invariant = packed_products(dtype)  # with lone rows written as pairs where needed

    @torch.no_grad()
    def __call__(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Float32 logits ``(B, 1, V)`` after the tokens ``x`` ``(B, 1)``, and the next state: each layer's output
        in ``dtype``, its cell in float32."""
        rows = len(x)
        if rows < self.min_rows:
            x = x.expand(self.min_rows, -1)
            state = None if state is None else [(h.expand(len(x), -1), c.expand(len(x), -1)) for h, c in state]
        h_in = self.embedding[x[:, 0]]
        if state is None:
            state = [(h_in.new_zeros(len(x), size), torch.zeros(len(x), size)) for _, size in self.layers]
        new_state: State = []
        for (matmul, size), (h, c) in zip(self.layers, state):
            gates = matmul(torch.cat([h_in, h], 1)).float()
            i, f, o = gates[:, : 3 * size].sigmoid().chunk(3, 1)
            c = torch.addcmul(f * c, i, gates[:, 3 * size :].tanh())
            h_in = h = (o * c.tanh()).to(self.dtype)
            new_state.append((h[:rows], c[:rows]))
        return self.decoder(h_in)[:rows].float().unsqueeze(1), new_state


class SeedLSTM(StackedLSTM):
    """The seed's Keras model: Embedding(V, 512) -> 3 x LSTM(512, dropout=0.3, full sequences) -> Dense(V)."""

    arch = "seed"

    def __init__(self, vocab_size: int, embed: int = 512, hidden: int = 512, layers: int = 3, dropout: float = 0.3):
        super().__init__(vocab_size, embed, hidden, layers)
        # Keras' LSTM(dropout=p) drops each layer's inputs with one mask per sequence (Keras 3, and standalone
        # Keras 2; tf.keras 2's fused LSTM drew a fresh one each step: keras-team/keras#19993).
        self.drop = LockedDropout(dropout)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        for lstm in self.lstms:
            _keras_lstm_init(lstm)
        nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    def _between(self, i: int, x: Tensor) -> Tensor:
        return self.drop(x) if i < len(self.lstms) else x


class ThouttLSTM(StackedLSTM):
    """Zach Thoutt's got-book-6 (TF 1.0): 3 x BasicLSTMCell(512) with output dropout (keep_prob 0.7)."""

    arch = "thoutt"

    def __init__(self, vocab_size: int, embed: int = 512, hidden: int = 512, layers: int = 3, dropout: float = 0.3):
        super().__init__(vocab_size, embed, hidden, layers)
        # DropoutWrapper(output_keep_prob): a fresh mask at every time step on each layer's output.
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.embedding.weight)  # embed_sequence's default (glorot) initializer
        for lstm in self.lstms:
            _tf1_basic_lstm_init(lstm)
        nn.init.xavier_uniform_(self.decoder.weight)  # fully_connected's xavier init
        nn.init.zeros_(self.decoder.bias)

    def _between(self, i: int, x: Tensor) -> Tensor:
        return self.drop(x) if i > 0 else x


@dataclass
class LSTMSizes:
    """Our default's sizes, chosen from the corpus size."""

    hidden: int
    layers: int


def default_sizes(train_tokens: int) -> LSTMSizes:
    """Small corpora want small models: ~128 units below 30k tokens, 256 up to 300k, then 512."""
    if train_tokens < 30_000:
        return LSTMSizes(hidden=128, layers=2)
    if train_tokens < 300_000:
        return LSTMSizes(hidden=256, layers=2)
    return LSTMSizes(hidden=512, layers=2)


class PoetLSTM(StackedLSTM):
    """Our default: a tied, dropout-regularised LSTM sized for one poet's corpus (after AWD-LSTM, Merity 2017).

    - tied input and output embeddings (Press & Wolf 2017; Inan et al. 2017): fewer parameters, better perplexity;
    - embedding dropout drops whole words (Gal & Ghahramani 2016);
    - locked (variational) dropout on every LSTM input and on the output (Gal & Ghahramani 2016; Merity 2017).
    """

    arch = "lstm"

    def __init__(
        self,
        vocab_size: int,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.4,
    ) -> None:
        super().__init__(vocab_size, hidden, hidden, layers)
        self.embed_dropout = dropout / 4  # AWD-LSTM's 0.1 beside its 0.4: one --dropout scales both
        self.drop = LockedDropout(dropout)
        self.decoder.weight = self.embedding.weight  # tying: the embedding is the output layer too
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        for lstm in self.lstms:
            _keras_lstm_init(lstm)

    def _make_lstm(self, input_size: int, hidden_size: int) -> nn.LSTM:
        return nn.LSTM(input_size, hidden_size, batch_first=True)

    def _embed(self, x: Tensor) -> Tensor:
        if self.training and self.embed_dropout > 0:
            weight = self.embedding.weight
            keep = weight.new_empty(weight.size(0), 1).bernoulli_(1 - self.embed_dropout) / (1 - self.embed_dropout)
            return nn.functional.embedding(x, weight * keep)
        return self.embedding(x)

    def _between(self, i: int, x: Tensor) -> Tensor:
        return self.drop(x)

    def summary_rows(self) -> list[SummaryRow]:
        rows = super().summary_rows()
        _, shape, _ = rows[-1]
        rows[-1] = ("dense (Dense, tied)", shape, self.decoder.bias.numel())  # its weight is the embedding
        return rows
