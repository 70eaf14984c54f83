import math
import subprocess
import sys
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neuralda import Poet
from neuralda.errors import NeuraldaError, NeuraldaWarning
from neuralda.generate import (
    MIN_TEMPERATURE,
    NoDistribution,
    SamplingConfig,
    Stopped,
    filter_logits,
    poem_generators,
    sample_next,
    write_poems,
)
from neuralda.run import Run
from neuralda.tokenizer import POEM_END, UNK, Vocab

WORDS = ["love", "sea", "salt", "night", ",", "."]


class FixedModel(nn.Module):
    """A model whose next-token logits are always ``logits`` (for exact sampling tests)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone(), requires_grad=False)

    def forward(self, x, state=None):
        return self.logits.expand(x.size(0), x.size(1), -1), state


def vocab() -> Vocab:
    return Vocab.build([WORDS])


def test_same_seed_same_poems_other_seed_other_poems(tiny_run):
    poet = Poet.load(tiny_run)
    a = poet.write(start="love", words=40, seed=7)
    assert a == poet.write(start="love", words=40, seed=7)
    assert a != poet.write(start="love", words=40, seed=8)
    assert isinstance(a, str) and a.startswith("love")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_poems_equal_one_by_one(tiny_run, precision):
    poet = Poet.load(tiny_run, precision=precision)
    batch = poet.write_many(4, start="the sea", words=30, seed=11, temperature=0.9)
    alone = [poet.write(start="the sea", words=30, seed=11 + i, temperature=0.9) for i in range(4)]
    assert batch == alone


@pytest.mark.parametrize("limit", ["poems", "scores"])
def test_many_poems_are_written_a_batch_at_a_time_and_are_the_same(tiny_run, monkeypatch, limit):
    """Memory is bounded by the batch: at most WRITE_BATCH poems, and fewer over a big vocabulary (each poem holds
    several rows of scores over the whole of it: at 256,000 words, 256 poems at once held 2.3 GB); each poem stays
    the one written alone."""
    import neuralda.generate as generate

    poet = Poet.load(tiny_run)
    together = poet.write_many(7, start="the sea", words=20, seed=4)
    rows = []
    steps = generate.writing_steps

    def recording(*args):  # the poems each batch starts with
        step = steps(*args)
        return lambda x, state: (state is None and rows.append(len(x)), step(x, state))[1]

    if limit == "poems":
        monkeypatch.setattr(generate, "WRITE_BATCH", 3)
    else:
        monkeypatch.setattr(generate, "WRITE_SCORES", 3 * len(poet.vocab) + 1)  # three poems' scores
    monkeypatch.setattr(generate, "writing_steps", recording)
    assert poet.write_many(7, start="the sea", words=20, seed=4) == together
    assert rows == [3, 3, 1]  # the 7th poem written alone


@pytest.mark.parametrize("own_steps", [False, True], ids=["packed steps", "the model's own (as on a GPU)"])
@pytest.mark.parametrize("arch", ["lstm", "seed", "gpt"])
def test_a_poem_that_has_ended_leaves_the_batch(arch, own_steps, monkeypatch):
    """The others go on with fewer rows, each still the poem it is alone (a random model: poems end anywhere)."""
    import neuralda.generate as generate
    from neuralda.models import build_model

    torch.manual_seed(0)
    v = vocab()
    model = build_model(arch, len(v), 64 if arch == "gpt" else 16, 1, 0.0).eval()
    steps = (lambda model, device, precision: model) if own_steps else generate.writing_steps
    monkeypatch.setattr(generate, "writing_steps", steps)
    alone = [write_poems(model, v, "love", words=40, seed=s) for s in range(8)]
    rows = []

    def recording(*args):
        step = steps(*args)

        def counted(x, state):
            rows.append(len(x))
            return step(x, state)

        counted.state_batch_dim = step.state_batch_dim
        return counted

    monkeypatch.setattr(generate, "writing_steps", recording)
    assert write_poems(model, v, "love", words=40, n=8, seed=0) == [poem for (poem,) in alone]
    assert rows[0] == 8 and rows == sorted(rows, reverse=True) and len(set(rows)) > 3
    assert sum(ended for (_, ended), in alone) >= 4


def test_bf16_by_name_runs_a_model_without_packed_steps_under_autocast():
    """As a GPU writes: the model itself under autocast; a model that does not say where its state keeps each poem
    keeps every row of a batch to the end, and a poem is the same in a batch as alone."""
    import neuralda.generate as generate

    v, autocast = vocab(), []

    class Recording(FixedModel):
        def forward(self, x, state=None):
            autocast.append(torch.is_autocast_enabled("cpu"))
            return super().forward(x, state)

    model = Recording(torch.zeros(len(v)))
    assert generate.writing_steps(model, torch.device("cpu"), "bf16").state_batch_dim is None
    together = write_poems(model, v, "love", words=12, n=5, seed=3, precision="bf16")
    assert all(autocast)
    assert together == [write_poems(model, v, "love", words=12, seed=3 + i, precision="bf16")[0] for i in range(5)]


def test_bf16_steps_give_the_model_probabilities(tiny_run):
    from neuralda.models.lstm import LSTMSteps
    from neuralda.run import Run

    run = Run.open(tiny_run)
    model, _ = run.load_model("best")
    ids = torch.tensor([run.vocab.encode_poems(p.text for p in run.poems("val"))[:200]] * 2)
    with torch.no_grad():
        expected, _ = model(ids)
        steps, state, got = LSTMSteps(model, torch.bfloat16), None, []
        for t in range(ids.size(1)):
            logits, state = steps(ids[:, t : t + 1], state)
            got.append(logits)
    got = torch.cat(got, 1)
    nll = [torch.nn.functional.cross_entropy(x[:, :-1].flatten(0, 1), ids[:, 1:].flatten()) for x in (expected, got)]
    assert (got.softmax(-1) - expected.softmax(-1)).abs().max() < 0.01
    assert abs(nll[1] / nll[0] - 1) < 0.005  # held-out perplexity within 0.5%


def test_bf16_steps_follow_a_model_that_is_still_training(tiny_run):
    import copy

    poet = Poet.load(tiny_run, precision="bf16")
    before = poet.write(start="love", words=30, seed=5)
    for p in poet.model.parameters():
        p.grad = torch.randn_like(p)
    torch.optim.SGD(poet.model.parameters(), lr=0.5).step()  # in place, as the trainer's optimizer does
    after = poet.write(start="love", words=30, seed=5)
    fresh = Poet(copy.deepcopy(poet.model), poet.vocab, precision="bf16").write(start="love", words=30, seed=5)
    assert after == fresh != before


def test_stops_after_words():
    v = vocab()
    logits = torch.zeros(len(v))
    logits[v.stoi[POEM_END]] = -torch.inf
    poem, ended = write_poems(FixedModel(logits), v, "love", words=10, seed=0)[0]
    assert not ended
    assert len([w for w in poem.replace(",", " ").replace(".", " ").split()]) == 10


def test_stops_at_poem_end():
    v = vocab()
    logits = torch.full((len(v),), -1e9)
    logits[v.stoi[POEM_END]] = 0
    assert write_poems(FixedModel(logits), v, "love sea", words=50, seed=0) == [("love sea", True)]


def test_writing_stops_when_told_and_is_the_same_when_never_told():
    v = vocab()
    logits = torch.zeros(len(v))
    logits[v.stoi[POEM_END]] = -torch.inf
    asked = []

    def stop_after_5() -> bool:
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(Stopped):
        write_poems(FixedModel(logits), v, "love", words=100, n=3, seed=0, stop=stop_after_5)
    assert len(asked) == 6  # asked before each token of the batch, and nothing written after it said so
    never = write_poems(FixedModel(logits), v, "love", words=20, n=3, seed=0, stop=lambda: False)
    assert never == write_poems(FixedModel(logits), v, "love", words=20, n=3, seed=0)


def test_unk_is_never_written():
    v = vocab()
    logits = torch.full((len(v),), -5.0)
    logits[v.unk] = 50.0  # the model wants <unk> above all
    logits[v.stoi[POEM_END]] = -torch.inf
    poem, _ = write_poems(FixedModel(logits), v, "love", words=30, seed=0)[0]
    assert UNK not in poem and len(poem.split()) > 5


def test_unknown_start_word_names_close_words():
    v = Vocab.build([["love", "lover", "sea"]])
    with pytest.raises(NeuraldaError, match=r"'lov'.*love"):
        write_poems(FixedModel(torch.zeros(len(v))), v, "sea lov", seed=0)


def test_a_start_pasted_with_invisible_marks_is_the_word_the_model_knows():
    v = Vocab.build([["sea-salt", "love", "sea"]])
    model = FixedModel(torch.zeros(len(v)))
    pasted, _ = write_poems(model, v, "lo\u00adve sea\u2011salt", words=6, seed=3)[0]  # a soft hyphen; U+2011
    typed, _ = write_poems(model, v, "love sea-salt", words=6, seed=3)[0]
    assert pasted == typed and pasted.startswith("love sea-salt")


def test_a_start_mark_spaced_otherwise_is_the_mark_the_model_knows():
    from neuralda.generate import start_tokens
    from neuralda.tokenizer import tokenize

    v = Vocab.build([tokenize("love, the sea -- the sea", end=False)])
    assert start_tokens("love ,", v) == ["love", ","]
    assert start_tokens("love--sea", v) == ["love", " -- ", "sea"]
    with pytest.raises(NeuraldaError, match="start word '!'"):
        start_tokens("love!", v)


def test_a_start_word_typed_with_the_other_apostrophe_is_the_one_the_model_knows():
    from neuralda.generate import start_tokens
    from neuralda.tokenizer import tokenize

    v = Vocab.build([tokenize("the sea’s salt and the bird's song", end=False)])
    assert start_tokens("sea's bird’s", v) == ["sea’s", "bird's"]  # a desktop keyboard's, then a phone's


def test_an_unknown_start_word_typed_without_its_accent_names_the_accented_one_first():
    from neuralda.generate import start_tokens
    from neuralda.tokenizer import tokenize

    v = Vocab.build([tokenize("amor mío, te miro y mido el mito, mi mismo río; tú", end=False)])
    with pytest.raises(NeuraldaError, match="close words it knows: mío"):
        start_tokens("mio", v)
    with pytest.raises(NeuraldaError, match="close words it knows: tú"):
        start_tokens("tu", v)
    with pytest.raises(NeuraldaError, match="does not know the start word '<'$"):  # as typed, not "< "
        start_tokens("<poembreak>", v)


def test_sampling_follows_the_model_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    picks = sample_next(probs.log().expand(4000, -1), poem_generators(0, 4000))
    freq = torch.bincount(picks, minlength=4).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03) and freq[3] == 0


def test_a_poem_draws_its_generator_own_numbers_in_order():
    """Draws taken a block at a time are the ones a torch.rand call each would give, across blocks too."""
    (uniforms,) = poem_generators(7, 1)
    gen = torch.Generator().manual_seed(7)
    one_each = [torch.rand(1, generator=gen, dtype=torch.float64).item() for _ in range(3 * uniforms.BLOCK + 5)]
    assert [uniforms.next() for _ in one_each] == one_each


def _drawn(logits: torch.Tensor, top_p: float, draws: int = 4000) -> torch.Tensor:
    """How often each token of a one-row ``logits`` is drawn with top-p, over ``draws`` seeds."""
    picks = sample_next(logits.expand(draws, -1), poem_generators(0, draws), top_p)
    return torch.bincount(picks, minlength=logits.size(-1)).double() / draws


def test_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, SamplingConfig(temperature=1.0, top_k=2, top_p=1.0)))
    assert kept.squeeze(0).tolist() == [True, True, False, False]
    # 0.5 + 0.3 is 0.8 only to float rounding, which decides a top-p of exactly 0.8 either way: just either side.
    assert _drawn(logits, 0.7999, 500).gt(0).tolist() == [True, True, False, False]
    assert _drawn(logits, 0.8001, 500).gt(0).tolist() == [True, True, True, False]
    assert _drawn(logits, 0.1, 500).gt(0).tolist() == [True, False, False, False]
    assert _drawn(logits, 1e-50, 50).gt(0).tolist() == [True, False, False, False]  # p * total rounds to 0


@pytest.mark.parametrize("float32_scans", [("cpu",), ()], ids=["float32", "float64 (GPUs)"])
@pytest.mark.parametrize("draws", [0, 1, 4])
def test_top_p_keeps_the_odds_inside_the_nucleus(monkeypatch, draws, float32_scans):
    """Drawing again when a draw lands outside the nucleus, and sorting it out after that, both give the
    nucleus's own odds: here 0.4 of the mass, so many rows need both (0 draws: the sort alone). Also with the
    float64 running sums GPUs use."""
    import neuralda.generate as g

    monkeypatch.setattr(g, "NUCLEUS_DRAWS", draws)
    monkeypatch.setattr(g, "_FLOAT32_SCANS", float32_scans)
    probs = torch.tensor([0.25, 0.15, 0.12, 0.1, 0.1, 0.1, 0.09, 0.09])
    freq = _drawn(probs.log().unsqueeze(0), 0.3)
    expected = torch.zeros(8, dtype=torch.float64)
    expected[:2] = probs[:2] / 0.4
    assert (freq - expected).abs().max() < 0.03


def _shifted_scores(rows: int, vocab: int, scale: float, seed: int = 0) -> torch.Tensor:
    """Scores as filter_logits hands them on: every 7th word blocked, the likeliest at 0."""
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    logits[:, ::7] = -torch.inf
    return logits - logits.amax(-1, keepdim=True)


@pytest.mark.parametrize("scale", [0.01, 0.3, 3.0, 30.0])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.95, 0.99])
def test_top_p_draws_only_from_the_nucleus(scale, p):
    """Every word drawn is one whose likelier words hold less than p (to float rounding), by a float64 sort."""
    logits = _shifted_scores(64, 3000, scale)
    probs = logits.double().softmax(-1)
    for seed in range(0, 400, 64):
        picks = sample_next(logits, poem_generators(seed, 64), p)
        chosen = probs.gather(1, picks.unsqueeze(1))
        likelier = torch.where(probs > chosen, probs, 0.0).sum(-1)
        assert (likelier < p + 1e-5).all()


def test_top_p_rows_do_not_depend_on_the_batch():
    logits = torch.cat([_shifted_scores(8, 3000, scale, seed=1) for scale in (0.01, 1.0, 30.0)])
    logits[0] = 0.0  # all tied: every word is kept
    tied = set()
    for seed in range(20):
        together = sample_next(logits, poem_generators(seed, len(logits)), 0.5)
        alone = [int(sample_next(row.unsqueeze(0), poem_generators(seed + i, 1), 0.5)) for i, row in enumerate(logits)]
        assert together.tolist() == alone
        tied.add(alone[0])
    assert len(tied) > 15


@pytest.mark.parametrize("vocab", [5, 100, 3000, 40_000, 200_000])
def test_a_row_is_summed_the_same_alone_as_in_a_batch(vocab):
    """Top-p's sums: torch's own sum of a lone row of 40,000 split it between threads here, and its bits differed
    from the same row's in a batch (by 0.002 in 20,000)."""
    from neuralda.generate import _row_sums

    x = torch.rand(24, vocab, generator=torch.Generator().manual_seed(vocab))
    sums = _row_sums(x)
    assert torch.equal(sums, torch.cat([_row_sums(x[i : i + 1]) for i in range(len(x))]))
    assert torch.allclose(sums.double(), x.double().sum(-1), rtol=1e-5)


_SCORE = st.one_of(st.floats(-1e30, 1e30), st.sampled_from([-torch.inf, torch.inf, torch.nan]))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 3).flatmap(
        lambda b: st.integers(1, 9).flatmap(
            lambda v: st.lists(st.lists(_SCORE, min_size=v, max_size=v), min_size=b, max_size=b)
        )
    ),
    st.floats(MIN_TEMPERATURE, 1e6),
    st.integers(0, 10),
    st.one_of(st.floats(0.01, 1.0), st.floats(1e-300, 1e-30)),
    st.floats(1.0, 10.0),
    st.integers(0, 2**32),
)
def test_any_scores_give_a_distribution_or_a_clear_error(rows, temperature, top_k, top_p, penalty, seed):
    logits = torch.tensor(rows, dtype=torch.float32)
    seen = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    cfg = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty)
    unusable = bool(((logits.isnan() | (logits == torch.inf)).any(-1) | (logits == -torch.inf).all(-1)).any())
    filtered = filter_logits(logits, cfg, seen)
    if unusable:
        with pytest.raises(NeuraldaError, match="no usable next-word probabilities"):
            sample_next(filtered, poem_generators(seed, len(rows)), top_p, temperature)
        return
    probs = ((filtered - filtered.amax(-1, keepdim=True)) / temperature).softmax(-1)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(len(rows)))
    picks = sample_next(filtered, poem_generators(seed, len(rows)), top_p, temperature)
    assert (probs[torch.arange(len(rows)), picks] > 0).all()
    assert torch.isfinite(logits[torch.arange(len(rows)), picks]).all()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_sharpens_or_flattens_the_odds(temperature):
    logits = torch.tensor([[1.0, 0.0]])
    picks = sample_next(logits.expand(4000, -1), poem_generators(0, 4000), temperature=temperature)
    assert abs((picks == 0).double().mean() - (logits / temperature).softmax(-1)[0, 0]) < 0.02


@pytest.mark.parametrize(
    "cfg",
    [SamplingConfig(temperature=t) for t in (0, 1e-60, math.inf, math.nan)]
    + [SamplingConfig(top_k=-1), SamplingConfig(top_p=0)]
    + [SamplingConfig(repetition_penalty=p) for p in (0.5, 1e39, math.inf, math.nan)],  # 1e39 is inf in float32
)
def test_bad_sampling_settings(cfg):
    with pytest.raises(NeuraldaError, match="^(temperature|top_k|top_p|repetition_penalty) must be "):
        cfg.check()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_broken_score_on_a_word_never_written_is_still_an_error(bad):
    # Setting the banned <unk> to -inf hid the model's NaN (or its +inf: "certainly <unk>"), and it wrote on.
    v = vocab()
    logits = torch.zeros(len(v))
    logits[v.unk] = bad
    with pytest.raises(NoDistribution, match="is the checkpoint damaged"):
        write_poems(FixedModel(logits), v, "love", words=3, seed=0)


def test_settings_that_leave_no_word_to_write_say_so_not_that_the_checkpoint_is_damaged():
    from neuralda.generate import CopyGuard

    v = Vocab.build([["a", "b"]])
    guard = CopyGuard.build(["a b a a b b"], v, 2)  # every word after any word copies two training words
    logits = torch.zeros(len(v))
    with pytest.raises(NoDistribution, match="the writing settings left no word to write"):
        # After "a" and a line break (a couplet's first line), every word is blocked, and so are the breaks.
        write_poems(FixedModel(logits), v, "a", words=10, seed=0, form="couplet", guard=guard)


def test_a_draw_that_rounds_up_never_picks_an_impossible_word(monkeypatch):
    """A uniform draw just below 1 can round to 1 in float32: inverse-CDF sampling must still land on a word
    that has probability, not run past the last one."""
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor([1 - 2**-26], dtype=torch.float64))
    logits = torch.tensor([[0.0, 0.0, -torch.inf], [0.0, -torch.inf, -torch.inf]])
    assert sample_next(logits, poem_generators(0, 2)).tolist() == [1, 0]


class ChainModel(nn.Module):
    """Predicts, after token a, the token the ``chain`` says follows it (a model that has memorised a text)."""

    def __init__(self, vocab_size: int, chain: dict[int, int]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.full((vocab_size, vocab_size), -3.0), requires_grad=False)
        for a, b in chain.items():
            self.table.data[a, b] = 8.0

    def forward(self, x, state=None):
        return self.table[x], state


def test_a_poem_without_a_start_is_never_empty():
    """With no start word (a model without "love"), the poem's end is not a first token: a model that ends poems
    right after a poem break wrote ~10% empty poems."""
    v = Vocab.build([["sea", "salt", ","]])
    end, sea = v.stoi[POEM_END], v.stoi["sea"]
    model = ChainModel(len(v), {end: end, sea: end})
    poems = write_poems(model, v, "", words=10, n=20, seed=0)
    assert all(poem for poem, _ in poems) and sum(ended for _, ended in poems) >= 15


def test_copy_guard_blocks_runs_of_training_words():
    from neuralda.generate import CopyGuard

    training = "the salt of the sea, the salt of the night"
    v = Vocab.build([["the", "salt", "of", "sea", "night", "moon", "wind", ",", "."]])
    order = ["the", "salt", "of", "the"]  # a model that loves to repeat "the salt of the ..."
    chain = {v.stoi[a]: v.stoi[b] for a, b in zip(order, order[1:] + ["salt"])}
    model = ChainModel(len(v), chain)
    copied, _ = write_poems(model, v, "the", words=12, seed=0)[0]
    assert "the salt of the" in copied
    guard = CopyGuard.build([training], v, 3)
    for seed in range(5):
        poem, _ = write_poems(model, v, "the", words=12, seed=seed, guard=guard)[0]
        words = [w for w in poem.replace(",", " ").replace(".", " ").split()]
        train_words = training.replace(",", " ").split()
        train_runs = {tuple(train_words[i : i + 3]) for i in range(len(train_words) - 2)}
        assert not any(tuple(words[i : i + 3]) in train_runs for i in range(len(words) - 2))


@settings(max_examples=30, deadline=None)
@given(poems=st.lists(st.lists(st.sampled_from("abcdef"), max_size=30), min_size=1, max_size=6), n=st.integers(2, 6))
def test_copy_guard_blocks_exactly_the_words_that_continue_a_training_run(poems, n):
    """Every run of n - 1 words, in or out of the training poems, is followed by exactly the words that follow it
    there, within one poem."""
    from neuralda.generate import CopyGuard

    v = Vocab.build([list("abcdef")])
    guard = CopyGuard.build([" ".join(p) for p in poems], v, n)
    following: dict[tuple, set] = {}
    for p in poems:
        ids = v.encode(p)
        for j in range(len(ids) - n + 1):
            following.setdefault(tuple(ids[j : j + n - 1]), set()).add(ids[j + n - 1])
    contexts = {tuple(v.encode(p[j : j + n - 1])) for p in poems for j in range(len(p))} | {(v.stoi["a"],) * (n - 1)}
    for context in contexts:
        if len(context) == n - 1:
            assert sorted(guard.blocked([0, *context])) == sorted(following.get(context, set()))


def test_repetition_penalty_makes_repeats_rarer():
    logits = torch.tensor([[2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, False, True]])
    out = filter_logits(logits, SamplingConfig(temperature=1.0, top_p=1.0, repetition_penalty=2.0), seen)
    assert torch.allclose(out.softmax(-1), torch.tensor([[1.0, 1.0, -2.0]]).softmax(-1))  # logits up to a shift


def test_a_run_without_its_data_writes_but_cannot_guard(tiny_run, tmp_path):
    """Checkpoint, config and vocabulary are enough to write; the copy guard needs the training poems."""

    shared = tmp_path / "shared"
    shutil.copytree(tiny_run, shared, ignore=shutil.ignore_patterns("data"))
    poet = Poet.load(shared)
    assert poet.write(start="love", words=20, seed=1) == Poet.load(tiny_run).write(start="love", words=20, seed=1)
    with pytest.raises(NeuraldaError, match="train.jsonl"):
        poet.write(start="love", words=20, seed=1, max_copy=4)


def test_no_empty_lines(tiny_run):
    poet = Poet.load(tiny_run)
    for poem in poet.write_many(8, start="love", words=80, seed=0, temperature=1.5):
        assert "\n\n\n" not in poem and all(line.strip() for s in poem.split("\n\n") for line in s.split("\n"))


def test_lines_and_form(tiny_run):
    poet = Poet.load(tiny_run)
    poem = poet.write(start="love", words=500, seed=3, lines=5)
    assert poem.count("\n") - poem.count("\n\n") <= 4
    quatrains = poet.write_many(3, start="love", words=60, seed=5, form="quatrain")
    for poem in quatrains:
        stanzas = poem.split("\n\n")
        assert all(len(s.split("\n")) == 4 for s in stanzas[:-1])
        assert len(stanzas[-1].split("\n")) <= 4


@pytest.mark.parametrize("form, per_stanza", [("couplet", 2), ("tercet", 3), ("quatrain", 4)])
def test_a_poem_in_a_form_ends_with_a_whole_stanza(tiny_run, form, per_stanza):
    run = Run.open(tiny_run)
    model, _ = run.load_model("best")
    poems = write_poems(model, run.vocab, "love", 400, 24, SamplingConfig(temperature=1.2), 0, form=form)
    ended = [poem for poem, ended in poems if ended]
    assert len(ended) >= 12  # the model ends most of them itself, long before 400 words
    for poem in ended:
        assert all(len(stanza.split("\n")) == per_stanza for stanza in poem.split("\n\n")), poem


def test_the_start_counts_towards_the_limits(tiny_run):
    """``--words`` is at most, start words included; a start's own line breaks count for --lines and --form, and
    a start that ends a line never gets an empty line after it."""
    poet = Poet.load(tiny_run)
    assert poet.write(start="love", words=1, seed=0) == "love"
    assert poet.write(start="love the sea", words=2, seed=0) == "love the sea"  # the start is kept whole
    for seed in range(8):
        assert len(poet.write(start="love\nthe sea", words=200, lines=2, seed=seed).split("\n")) <= 2
        couplets = poet.write(start="love\nthe sea", words=60, form="couplet", seed=seed).split("\n\n")
        assert all(len(s.split("\n")) == 2 for s in couplets[:-1]), couplets
        assert "\n\n\n" not in poet.write(start="love\n", words=30, seed=seed)


def test_a_numpy_seed_is_a_seed(tiny_run):
    import numpy as np

    poet = Poet.load(tiny_run)
    assert poet.write(start="love", words=20, seed=np.int64(3)) == poet.write(start="love", words=20, seed=3)


def test_a_few_copy_guards_are_kept(tiny_run):
    """Each length asked for builds an index of the training poems; the server keeps the last three, not all."""
    poet = Poet.load(tiny_run)
    first = poet.guards.get(2)
    for n in (3, 4, 5, 6):
        poet.guards.get(n)
    assert len(poet.guards._built) == 3 and poet.guards.get(2) is not first
    again = poet.guards.get(2)
    assert (again.keys == first.keys).all() and (again.following == first.following).all()


def test_a_library_user_gets_one_line_errors(tiny_run):
    """From Python as from the command line, a wrong value or type is a NeuraldaError naming it, before any work."""
    with pytest.raises(NeuraldaError, match="unknown device 'gpu'"):
        Poet.load(tiny_run, device="gpu")
    with pytest.raises(NeuraldaError, match="unknown precision 'fp16'"):
        Poet.load(tiny_run, precision="fp16")
    poet = Poet.load(tiny_run, device="auto" if not torch.cuda.is_available() else "cpu")
    assert repr(poet).startswith("Poet(") and "epoch=" in repr(poet)
    for options, named in [
        ({"seed": "1"}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": [1, "2"]}, "each seed"),
        ({"temperature": "0.9"}, "temperature"), ({"top_p": None}, "top_p"), ({"top_k": 2.5}, "top_k"),
        ({"repetition_penalty": [1.2]}, "repetition_penalty"), ({"words": 2.5}, "words"), ({"words": "50"}, "words"),
        ({"lines": True}, "lines"), ({"max_copy": 4.0}, "max_copy"), ({"start": 5}, "start"),
    ]:
        with pytest.raises(NeuraldaError, match=f"^{named} must be"):
            poet.write(**options)
    assert poet.write_many(2, start="love", words=12, seed=(s for s in (4, 9))) == [
        poet.write(start="love", words=12, seed=s) for s in (4, 9)
    ]


def test_a_library_user_gets_one_line_errors_for_names_of_the_wrong_type(tiny_run):
    """A checkpoint, device, precision or run directory that is not text, or a form that is a list, raised a
    TypeError or AttributeError from deep inside (a regular expression, pathlib, a dict lookup)."""
    for options, named in [
        ({"checkpoint": None}, "checkpoint"), ({"checkpoint": 5}, "checkpoint"), ({"device": None}, "device"),
        ({"device": 0}, "device"), ({"precision": None}, "precision"),
    ]:
        with pytest.raises(NeuraldaError, match=f"^{named} must be text"):
            Poet.load(tiny_run, **options)
    with pytest.raises(NeuraldaError, match="^run_dir must be a path"):
        Poet.load(None)
    with pytest.raises(NeuraldaError, match=r"^unknown form \['quatrain'\]"):
        Poet.load(tiny_run).write(form=["quatrain"])


@pytest.mark.parametrize("option, value, problem", [
    ("top_p", 2, "must be in (0, 1], got 2.0"), ("top_k", -1, "must be 0 or more, got -1"),
    ("max_copy", 1, "must be 0 (no guard) or at least 2 words, got 1"), ("lines", -1, "must be 0 or more, got -1"),
    ("repetition_penalty", 0.5, "must be a number from 1 to 3.4e+38, got 0.5"),
])
def test_a_bad_option_is_named_as_python_spells_it_and_as_the_command_line_does(tiny_run, capsys, option, value, problem):
    """A library user who passed top_p=2 was told about --top-p, a flag they never saw; the command line keeps it."""
    from neuralda.cli import main

    with pytest.raises(NeuraldaError) as e:
        Poet.load(tiny_run).write(words=5, **{option: value})
    assert str(e.value) == f"{option} {problem}"
    flag = "--" + option.replace("_", "-")
    assert main(["generate", str(tiny_run), flag, str(value), "--words", "5"]) == 2
    assert capsys.readouterr().err == f"neuralda: error: {flag} {problem}\n"

@pytest.mark.parametrize("temperature", [1e39, 1e308])
def test_a_temperature_float32_cannot_hold_is_an_error_naming_it_not_a_damaged_checkpoint(tiny_run, temperature):
    """Scores are divided by the temperature in float32, where 1e39 is infinite: every blocked word's -inf / inf
    was NaN, and the error blamed the checkpoint."""
    with pytest.raises(NeuraldaError, match="^temperature must be a number from"):
        Poet.load(tiny_run).write(words=5, seed=1, temperature=temperature)
    assert Poet.load(tiny_run).write(words=5, seed=1, temperature=3e38)


def test_an_untrained_checkpoint_warns(tmp_path, tiny_run):
    from neuralda.run import model_tensors, save_checkpoint

    run = Run.open(shutil.copytree(tiny_run, tmp_path / "run"))
    save_checkpoint(run.checkpoint_path("last"), model_tensors(run.build_model()), {"epoch": 0, "arch": "lstm"})
    with pytest.warns(NeuraldaWarning, match="'last' holds epoch 0: untrained weights"):
        Poet.load(run.path, "last")


def test_poet_is_listed_in_the_package():
    import neuralda

    assert "Poet" in dir(neuralda) and "Poet" in neuralda.__all__


def test_a_copy_guard_longer_than_the_corpus_is_built_at_once():
    # --max-copy 1000000000000 hashed 10^12 - 1 positions of no run at all (a hang); 10^20 overflowed (a traceback).
    import numpy as np

    from neuralda.generate import CopyGuard

    words = np.array([1, 2, 3, -1, 4, 5], dtype=np.int64)
    for n in (7, 10**20, 10**12):
        guard = CopyGuard.from_words(words, n)
        assert guard.blocked([1, 2, 3]) == []


def _peaked(v: Vocab, scores: dict) -> FixedModel:
    """A model giving ``scores`` to those tokens and -inf to every other (the poem's end too)."""
    logits = torch.full((len(v),), -torch.inf)
    for token, score in scores.items():
        logits[v.stoi[token]] = score
    return FixedModel(logits)


_GREEDY = SamplingConfig(temperature=MIN_TEMPERATURE, top_p=1.0, repetition_penalty=2.0)


def test_top_k_keeps_the_likeliest_after_the_repetition_penalty():
    """The penalty comes before top-k: a word pushed down by it makes room for the next one."""
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    seen = torch.tensor([[True, False, False]])
    cfg = SamplingConfig(temperature=1.0, top_k=2, top_p=1.0, repetition_penalty=4.0)
    assert torch.isfinite(filter_logits(logits, cfg, seen)).squeeze(0).tolist() == [False, True, True]


@pytest.mark.parametrize("draws", [0, 4])
def test_top_p_at_an_exact_boundary_keeps_no_word_past_it(monkeypatch, draws):
    """A word whose likelier words already hold exactly p is outside, by rejection and by the sort alike."""
    import neuralda.generate as g

    monkeypatch.setattr(g, "NUCLEUS_DRAWS", draws)
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))  # exact in binary: the running sums are too
    assert _drawn(logits, 0.75, 500).gt(0).tolist() == [True, True, False, False]


def test_the_start_words_count_as_already_written_for_the_penalty():
    """--repetition-penalty lowers the start's words too: "love" is not written again right after it."""
    v = vocab()
    poem, _ = write_poems(_peaked(v, {"love": 1.0, "sea": 0.9}), v, "love", words=2, sampling=_GREEDY, seed=0)[0]
    assert poem == "love sea"


def test_the_repetition_penalty_lowers_words_not_line_breaks():
    """Only words are penalised: a line break written once stays as likely as before."""
    v = vocab()
    model = _peaked(v, {"<nl>": 1.0, "sea": 0.9, "salt": 0.8})
    poem, _ = write_poems(model, v, "love", words=3, sampling=_GREEDY, seed=0)[0]
    assert poem == "love\nsea\nsalt"


def test_a_start_with_more_lines_than_asked_is_the_whole_poem():
    """--lines counts the start's own lines: a two-line start with --lines 1 is kept whole and gets no more words."""
    v = vocab()
    model = _peaked(v, {"sea": 1.0, "salt": 1.0, "<nl>": 0.0})
    assert write_poems(model, v, "love\nnight", words=30, lines=1, seed=0) == [("love\nnight", False)]


def test_a_poem_without_a_start_begins_with_love_where_the_model_knows_it():
    """No start: "love", as the seed's poems began; a model without that word begins anywhere."""
    v = vocab()
    poems = write_poems(_peaked(v, {"sea": 1.0, "salt": 1.0}), v, None, words=3, n=4, seed=0)
    assert all(poem.startswith("love ") for poem, _ in poems)
    other = Vocab.build([["sea", "salt"]])
    poems = write_poems(_peaked(other, {"sea": 0.0, "salt": 0.0}), other, None, words=2, seed=0)
    assert all(p.split()[0] in ("sea", "salt") for p, _ in poems)


def test_the_start_is_read_after_a_poem_break_as_in_training():
    """The model reads <poembreak> then the start, one token at a time, as each training poem began."""
    v = vocab()
    fed = []

    class Recording(FixedModel):
        def forward(self, x, state=None):
            fed.append(int(x[0, 0]))
            return super().forward(x, state)

    write_poems(Recording(torch.zeros(len(v))), v, "love sea", words=3, seed=0)
    assert fed[:3] == [v.stoi[POEM_END], v.stoi["love"], v.stoi["sea"]]


def test_the_copy_guard_blocks_a_character_in_each_of_its_spellings():
    """" 蛙" (spaced by the poet) and "蛙" are one word: --max-copy 2 keeps "や" from being followed by either."""
    from neuralda.generate import CopyGuard
    from neuralda.tokenizer import tokenize

    training = ["古池や 蛙飛び込む", "蛙 蛙"]
    v = Vocab.build([tokenize(t) for t in training])
    assert {" 蛙", "蛙"} <= set(v.itos)
    model = _peaked(v, {"蛙": 5.0, " 蛙": 5.0, "池": 0.0})  # a copy, in either spelling, is far likelier
    poems = write_poems(model, v, "や", words=2, n=8, seed=0, guard=CopyGuard.build(training, v, 2))
    assert [p for p, _ in poems] == ["や池"] * 8


def test_the_repetition_penalty_lowers_a_character_in_each_of_its_spellings():
    """" 蛙" and "蛙" are one word to the penalty too: written once, in either spelling, it is lowered in both."""
    from neuralda.tokenizer import tokenize

    v = Vocab.build([tokenize(t) for t in ["古池や 蛙飛び込む", "蛙 蛙"]])
    model = _peaked(v, {"蛙": 2.0, " 蛙": 2.0, "池": 1.5, "飛": 1.4})  # halved, 蛙 is the least likely
    for start in ("蛙", "や"):  # the start's word, and a word written
        poem, _ = write_poems(model, v, start, words=3, sampling=_GREEDY, seed=0)[0]
        assert poem.replace(" ", "").count("蛙") == 1, poem


@pytest.mark.parametrize("arch, hidden", [("lstm", 32), ("gpt", 64)])
def test_loading_a_run_and_writing_never_imports_the_compiler(tmp_path, corpus_file, arch, hidden):
    """A model built on the meta device (to check a checkpoint's sizes, or to count it) imported torch._dynamo through
    its meta normal_ and arange: 2 s of a 4 s `neuralda generate`."""
    from conftest import tiny_config
    from neuralda.train import train

    train(tiny_config(corpus_file, tmp_path / "run", epochs=1, arch=arch, hidden=hidden), log=lambda s: None)
    code = (
        "import sys\n"
        "from neuralda import Poet\n"
        "from neuralda.run import Run\n"
        f"print(Poet.load({str(tmp_path / 'run')!r}).write(words=5, seed=0) != '', 'Total params' in Run.open("
        f"{str(tmp_path / 'run')!r}).summary(), 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]


@pytest.mark.parametrize("option, value, least", [("words", 0, 1), ("n", 0, 1), ("lines", -1, 0)])
def test_a_count_out_of_range_is_named_alone(tiny_run, option, value, least):
    """One message named three options ("--words and --n must be at least 1, --lines 0 or more") whichever was
    wrong."""
    poet = Poet.load(tiny_run)
    options = {"n": 1, "words": 5, "lines": 0, option: value}
    with pytest.raises(NeuraldaError, match=f"^{option} must be {least} or more, got {value}$"):
        poet.write_many(**options)


def test_loading_a_poet_leaves_the_caller_s_random_numbers_be(tiny_run):
    """Building the model drew its first weights (replaced at once) from torch's generator: a notebook's seeded
    draws after Poet.load came out otherwise."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Poet.load(tiny_run)
    assert torch.equal(torch.rand(3), expected)


def test_a_fraction_or_a_numpy_float_is_a_number_to_sample_with(tiny_run):
    """A Fraction passed the number check and failed inside torch (div_() of a Fraction)."""
    from fractions import Fraction

    import numpy as np

    poet = Poet.load(tiny_run)
    half = poet.write(seed=1, words=12, temperature=0.5, top_p=0.5)
    assert poet.write(seed=1, words=12, temperature=Fraction(1, 2), top_p=Fraction(1, 2)) == half
    assert poet.write(seed=1, words=12, temperature=np.float16(0.5), top_p=np.float32(0.5)) == half
