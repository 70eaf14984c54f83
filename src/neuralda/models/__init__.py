"""Models by name, each with the training recipe that goes with it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ..errors import NeuraldaError


@dataclass(frozen=True)
class Recipe:
    """How an architecture is trained when the user says nothing else."""

    epochs: int
    batch_size: int
    seq_len: int
    lr: float
    dropout: float
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw
    # Adam's epsilon added as Keras and TensorFlow 1 add it, to sqrt(v) before the bias correction ("epsilon hat",
    # Kingma & Ba 2015, the formula before section 2.1): Keras' default 1e-7, TF1's 1e-8 (None: torch's eps 1e-8).
    epsilon_hat: float | None = None
    clip_value: float | None = None  # clip each gradient element to +-value (got-book-6)
    clip_norm: float | None = None  # clip the global gradient norm
    schedule: str = "none"  # none | plateau (halve the rate when validation stops improving)
    stateful: bool = False  # read the corpus as batch_size parallel streams, in order, seq_len words a batch
    carry_state: bool = True  # with stateful: each batch starts from the state the one before ended in
    patience: int = 0  # stop after this many epochs without a better validation loss (0: never)
    unk_rate: float = 0.0  # each epoch, read each word seen once in training as <unk> with this probability
    save_at: tuple[int, ...] = field(default_factory=tuple)


RECIPES: dict[str, Recipe] = {
    # The seed: Keras model.fit on shuffled windows of 30 words, batches of 512, Adam 1e-3, 400 epochs.
    "seed": Recipe(epochs=400, batch_size=512, seq_len=30, lr=1e-3, dropout=0.3, epsilon_hat=1e-7, save_at=(200, 400)),
    # got-book-6: the same sizes, 512 streams of 30 words carried statefully, gradients clipped to +-1. Its own
    # training loop fed each batch's final state to `initial_state`, a tensor its tf.nn.dynamic_rnn never read (it
    # was given only dtype=, so it made its own zeros): `--no-carry-state` trains as that code did.
    "thoutt": Recipe(
        epochs=400, batch_size=512, seq_len=30, lr=1e-3, dropout=0.3, clip_value=1.0, stateful=True, epsilon_hat=1e-8,
        save_at=(200, 400),
    ),
    # Ours: small batches and truncated BPTT over carried state (Zaremba 2014; Merity 2017), AdamW with decoupled
    # weight decay (Loshchilov & Hutter 2019), the rate halved on a plateau, early stopping on validation loss.
    "lstm": Recipe(
        epochs=100,
        batch_size=32,
        seq_len=35,
        lr=3e-3,
        dropout=0.4,
        weight_decay=0.01,
        optimizer="adamw",
        clip_norm=0.5,
        schedule="plateau",
        stateful=True,
        patience=4,
        # Words seen once read as <unk> half the time: held-out poems are ~5% unknown words, and a model that never
        # saw <unk> pays ~11 nats for each (measured: val ppl 162 against 287 after 6 epochs on the six corpora).
        unk_rate=0.5,
    ),
    # A small GPT (Radford et al. 2019, after nanoGPT) on shuffled windows of its whole context: AdamW with weight
    # decay 0.1 and gradients clipped to norm 1 (GPT-3, Brown et al. 2020); no warmup, as pre-norm trains without
    # one (Xiong et al. 2020). Batches of 16 and dropout 0.3 beat 32 and 0.2 on the six corpora (ppl 258 at epoch 5).
    "gpt": Recipe(
        epochs=100,
        batch_size=16,
        seq_len=128,
        lr=1e-3,
        dropout=0.3,
        weight_decay=0.1,
        optimizer="adamw",
        clip_norm=1.0,
        schedule="plateau",
        patience=4,
        unk_rate=0.5,  # as for our LSTM
    ),
}

ARCHS = tuple(RECIPES)
# Sizes past any model a machine holds, that `summary` still counts on torch's meta device (a layer of hidden 2**28
# holds 2**58 weights, under the 2**63 of torch's sizes): past them the sizes overflow (hidden 2**40 was a "Storage
# size calculation overflowed" traceback) or building alone takes hours (layers 10**7); a size merely too large
# for the machine is an out-of-memory error.
MAX_HIDDEN, MAX_LAYERS = 1 << 28, 1 << 10


def recipe(arch: str) -> Recipe:
    """The recipe of ``arch``; an unknown name lists the known ones."""
    try:
        return RECIPES[arch]
    except KeyError:
        raise NeuraldaError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}") from None


def build_model(arch: str, vocab_size: int, hidden: int, layers: int, dropout: float):
    """A fresh model of ``arch`` (initialised from torch's global RNG)."""
    from .gpt import GPT, GPTConfig, heads
    from .lstm import PoetLSTM, SeedLSTM, ThouttLSTM

    recipe(arch)
    if not (1 <= hidden <= MAX_HIDDEN and 1 <= layers <= MAX_LAYERS):
        raise NeuraldaError(
            f"hidden {hidden:,} and layers {layers:,}: each from 1 up to {MAX_HIDDEN:,} and {MAX_LAYERS:,}"
        )
    if arch == "gpt":
        return GPT(GPTConfig(vocab_size, n_layer=layers, n_embd=hidden, n_head=heads(hidden), dropout=dropout))
    if arch == "seed":
        return SeedLSTM(vocab_size, embed=hidden, hidden=hidden, layers=layers, dropout=dropout)
    if arch == "thoutt":
        return ThouttLSTM(vocab_size, embed=hidden, hidden=hidden, layers=layers, dropout=dropout)
    return PoetLSTM(vocab_size, hidden=hidden, layers=layers, dropout=dropout)


def normal_(tensor, std: float = 1.0):
    """``nn.init.normal_(tensor, 0, std)``, except on torch's meta device, where there is nothing to draw: its meta
    ``normal_`` imports torch's compiler, 1.3-2.7 s of a `neuralda generate` that builds the model there first to
    check a checkpoint's sizes (``run.check_sizes``)."""
    from torch import nn

    return tensor if tensor.is_meta else nn.init.normal_(tensor, 0.0, std)


def embedding(num: int, dim: int):
    """``nn.Embedding(num, dim)``, drawn as it draws its weights (``normal_`` above, off the meta device)."""
    import torch
    from torch import nn

    return nn.Embedding(num, dim, _weight=normal_(torch.empty(num, dim)))


PACKED_ROWS = 32  # the rows oneDNN lays packed weights out for: float32 steps of 1-32 rows ran 1.4-2.2x faster
# packed for 32 rows than for 1 (bfloat16 ones the same), and gave one row the bits it gets in a batch


@functools.cache
def packed_products(dtype) -> bool:
    """Whether this build runs oneDNN's packed products in ``dtype`` (``packed_matmul``), which give a row the same
    bits in a batch of any size. Where it does not, plain products stand in, and they round a row otherwise in
    batches of other sizes (against 40 rows: float32 at 1, 2, 3, 5, 8 and 15 rows, bfloat16 at 3 to 31): a poem
    written in a batch is then not always the one written alone, and the steps are not ``batch_invariant``."""
    import torch

    w = torch.ones(4, 4, dtype=dtype)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, PACKED_ROWS)
        torch.ops.mkldnn._linear_pointwise(w[:2], packed, torch.zeros(4), "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return True


def packed_matmul(weight, dtype, bias=None):
    """``x -> x @ weight.T + bias`` in ``dtype``, the weight packed once for oneDNN (the packing PyTorch's own
    compiler uses on CPUs), for writing one token at a time on a CPU (``LSTMSteps``, ``GPTSteps``); a plain product
    where this build's private oneDNN ops differ (``packed_products``). A float32 ``bias`` is added to the float32 sums
    inside the product (adding it after took 0.05 ms of a 0.23 ms bfloat16 product of 32 rows here, converting it to
    float32)."""
    import torch

    w = weight.detach().to(dtype)
    b = None if bias is None else bias.detach().float()
    if not packed_products(dtype):
        b = None if b is None else b.to(dtype)
        return lambda x: torch.nn.functional.linear(x.to(dtype), w, b)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, PACKED_ROWS)
    return lambda x: torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, b, "none", [], "")


def same_alone_as_in_pairs(matmul, columns: int) -> bool:
    """Whether ``matmul`` gives a row the same bits alone as beside another (a lone row may take another kernel)."""
    import torch

    x = torch.randn(2, columns, generator=torch.Generator().manual_seed(0))
    return torch.equal(matmul(x[:1]), matmul(x)[:1])


def default_size(arch: str, train_tokens: int) -> tuple[int, int]:
    """(hidden, layers) for ``arch``: the published 3 x 512 for the seed and got-book-6, from the corpus for ours."""
    from . import gpt
    from .lstm import default_sizes

    if arch in ("seed", "thoutt"):
        return 512, 3
    if arch == "gpt":
        return gpt.default_sizes(train_tokens)
    sizes = default_sizes(train_tokens)
    return sizes.hidden, sizes.layers


def summary_table(model, title: str) -> str:
    """A Keras-style summary (layer, output shape, parameters, totals) to set beside the seed's."""
    rows = model.summary_rows()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    width = 65
    lines = [f'Model: "{title}"', "_" * width, f"{'Layer (type)':<29}{'Output Shape':<26}{'Param #':<10}", "=" * width]
    for i, (name, shape, params) in enumerate(rows):
        lines.append(f"{name:<29}{shape:<26}{params:<10}")
        lines.append("=" * width if i == len(rows) - 1 else "_" * width)
    lines += [
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        "_" * width,
    ]
    return "\n".join(line.rstrip() for line in lines)
