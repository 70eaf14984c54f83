import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_poems, write_jsonl
from neuralda.corpus import Poem
from neuralda.errors import NeuraldaError
from neuralda.evaluate import (
    NgramIndex,
    comparability_notes,
    compare_rows,
    copied_share,
    distinct_n,
    evaluate_run,
    format_compare,
    heldout_measures,
    heldout_text,
    parse_spec,
    poem_words,
    sample_measures,
    suffix_array,
    HeldoutScorer,
    token_nll,
)
from neuralda.run import Run
from neuralda.tokenizer import Vocab, tokenize

TRAINING = [
    "Love is a lamp left burning by the sea,\nthe salt wind sings of bread and stone.",
    "Night opens its dark blue door;\nwe don't ask the stars where they go.",
]


class Uniform(nn.Module):
    """Every token equally likely: the perplexity of any text is the vocabulary size."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.decoder = nn.Linear(1, vocab_size)
        nn.init.zeros_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    def features(self, x, state=None):
        return torch.zeros(*x.shape, 1), state

    def forward(self, x, state=None):
        h, state = self.features(x, state)
        return self.decoder(h), state


def index() -> NgramIndex:
    return NgramIndex(poem_words(t) for t in TRAINING)


def test_a_uniform_model_has_perplexity_v_on_every_token():
    ids = torch.randint(0, 37, (2000,))  # 15 streams of 134: the last one padded
    nll, count = token_nll(Uniform(37), ids)
    assert count == 1999
    assert math.exp(nll / count) == pytest.approx(37, rel=1e-5)  # float32 softmax


def test_processes_sharing_the_streams_score_the_whole_text(tiny_run):
    """Under torchrun each process reads its share of the held-out streams; together they score what one does."""
    run = Run.open(tiny_run)
    model, _ = run.load_model("best")
    ids = torch.tensor(run.vocab.encode_poems(run.training_texts()))
    whole = token_nll(model, ids)
    for processes in (2, 3, 20):  # 20: more processes than streams, some with none
        shares = [token_nll(model, ids, share=(rank, processes)) for rank in range(processes)]
        assert sum(count for _, count in shares) == whole[1]
        assert sum(nll for nll, _ in shares) == pytest.approx(whole[0], rel=1e-6)
    assert token_nll(model, ids, share=(0, 2))[1] < whole[1]


def test_a_big_vocabulary_is_read_in_shorter_chunks():
    """The scores of a chunk grow with the vocabulary: past EVAL_LOGITS they are read a shorter chunk at a time,
    to the same perplexity."""
    chunks = []

    class Probe(Uniform):
        def features(self, x, state=None):
            chunks.append(x.size(1))
            return super().features(x, state)

    ids = torch.randint(0, 50, (4000,))
    token_nll(Probe(50), ids)
    assert max(chunks) == 128
    chunks.clear()
    nll, count = token_nll(Probe(100_000), ids)
    assert 8 <= max(chunks) < 128 and 16 * max(chunks) * 100_000 <= (1 << 24)
    assert math.exp(nll / count) == pytest.approx(100_000, rel=1e-4)


def test_held_out_loss_on_a_gpu_is_read_without_tf32():
    """Training turns TF32 on for a GPU's speed; ``evaluate`` measures held-out loss in full float32, and the
    training's flags are back afterwards. Elsewhere (and for training's own validation, "tf32") they are not touched."""
    from neuralda.evaluate import _full_float32

    tf32 = torch.backends.cuda.matmul, torch.backends.cudnn
    before = [flags.allow_tf32 for flags in tf32]
    try:
        for flags in tf32:
            flags.allow_tf32 = True
        with _full_float32("fp32", torch.device("cuda")):
            assert [flags.allow_tf32 for flags in tf32] == [False, False]
        assert [flags.allow_tf32 for flags in tf32] == [True, True]
        for precision, device in (("bf16", "cuda"), ("tf32", "cuda"), ("fp32", "cpu")):  # a CPU has no TF32
            with _full_float32(precision, torch.device(device)):
                assert [flags.allow_tf32 for flags in tf32] == [True, True]
    finally:
        for flags, value in zip(tf32, before):
            flags.allow_tf32 = value


def scorer_case(tiny_run, device: str):
    run = Run.open(tiny_run)
    model, _ = run.load_model("best")
    return model.to(device), torch.tensor(run.vocab.encode_poems(run.training_texts())).to(device)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_a_scorer_kept_for_a_run_scores_the_weights_it_is_given_now(tiny_run, device):
    """Training lays its held-out text out once and scores it after each epoch; on a GPU the pass is captured as a
    CUDA graph after the first. Each score is the one token_nll gives for the weights of that moment (the optimizer
    updates them in place)."""
    model, ids = scorer_case(tiny_run, device)
    scorer = HeldoutScorer(model, ids, graph=True)
    first = scorer()
    assert scorer() == first == token_nll(model, ids)
    assert (scorer.graph is not None) == (device == "cuda")
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(0.9)
    again = scorer()
    assert again == token_nll(model, ids) and again[0] != first[0]


def test_a_pass_a_gpu_cannot_capture_is_scored_as_the_first_was(tiny_run, monkeypatch):
    """Where capturing the pass as a CUDA graph fails, validation goes on without one: same scores, no error."""
    model, ids = scorer_case(tiny_run, "cpu")
    tries = []

    def refused(graph):
        tries.append(graph)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", refused)
    scorer = HeldoutScorer(model, ids)
    scorer.capture = True  # as on a GPU
    assert scorer() == scorer() == token_nll(model, ids)
    assert len(tries) == 1 and scorer.graph is None and not scorer.capture


@pytest.mark.parametrize("streams, block_rows", [(16, None), (3, 5)])
def test_token_nll_is_the_text_read_as_one_stream(tiny_run, monkeypatch, streams, block_rows):
    """Parallel streams read in chunks, each first reading the text before its part, score what one stream read
    whole scores (streams that started from a fresh state mid-text scored 5% worse on a small held-out set); so do
    fewer streams, their logits a few rows at a time."""
    import neuralda.evaluate
    from neuralda.evaluate import EVAL_CHUNK

    run = Run.open(tiny_run)
    model, _ = run.load_model("best")
    monkeypatch.setattr(neuralda.evaluate, "EVAL_STREAMS", streams)
    if block_rows:
        monkeypatch.setattr(neuralda.evaluate, "CPU_LOSS_CHUNK", block_rows * model.vocab_size)
    ids = torch.tensor(run.vocab.encode_poems(run.training_texts()))
    assert ids.numel() > 8 * EVAL_CHUNK  # read as several streams
    with torch.no_grad():
        logits, _ = model(ids[:-1].unsqueeze(0))
        expected = torch.nn.functional.cross_entropy(logits[0], ids[1:], reduction="sum").item()
    nll, count = token_nll(model, ids)
    assert count == ids.numel() - 1 and nll == pytest.approx(expected, rel=1e-5)


def test_held_out_measures_on_a_hand_made_case():
    vocab = Vocab.build([tokenize("the sea.")])
    V = len(vocab)  # 4 specials, "the", "sea", "."
    assert V == 7
    text = heldout_text([Poem("", "", "The sea."), Poem("", "", "the moon")], vocab)
    # Scored: the sea . <poembreak> the <unk> <poembreak>; 4 words; "the sea." and "the moon" and two ends.
    assert (text.ids.numel() - 1, text.words, text.chars, text.unknown) == (7, 4, 18, 1)
    m = heldout_measures(Uniform(V), text)
    assert m["perplexity"] == pytest.approx(V)
    assert m["perplexity_per_word"] == pytest.approx(V ** (7 / 4))
    assert m["bits_per_char"] == pytest.approx(7 * math.log2(V) / 18)
    assert m["oov_rate"] == pytest.approx(1 / 7) and m["tokens"] == 7


def test_a_poem_that_copies_a_training_poem_is_all_copied():
    words = poem_words(TRAINING[0])
    m = sample_measures([(TRAINING[0], True)], index())
    assert m["copied_4gram_share"] == m["copied_6gram_share"] == m["copied_8gram_share"] == 1.0
    assert m["longest_copy"] == len(words) == 17 and m["ended_share"] == 1.0


def test_a_novel_poem_copies_nothing():
    m = sample_measures([("Copper rivers remember silver harvests under quiet hills tonight", False)], index())
    assert m["copied_4gram_share"] == m["copied_6gram_share"] == m["copied_8gram_share"] == 0.0
    assert m["longest_copy"] == 0 and m["ended_share"] == 0.0 and m["samples"] == 1


def test_no_poems_measure_nothing_rather_than_zero():
    """--samples 0 (or poems too short for a measure) shows "-", not a 0 that reads as "nothing copied"."""
    m = sample_measures([], index())
    assert m["samples"] == 0
    assert all(m[k] is None for k in m if k != "samples")
    short = sample_measures([("Copper rivers", True)], index())
    assert short["copied_4gram_share"] is None and short["distinct_1"] == 1.0 and short["ended_share"] == 1.0
    marks = sample_measures([("!", True), ("…", True)], index())  # poems of marks only: no word to copy
    assert marks["longest_copy"] is None and marks["distinct_1"] is None


def test_copied_runs_are_counted_but_not_across_poems():
    idx = index()
    # "by the sea the salt wind" is 6 words of poem 1; "bread and stone | night opens" crosses into poem 2.
    poem = poem_words("By the sea, the salt wind! Bread and stone, night opens.")
    assert idx.longest_copy(poem) == 6
    assert idx.contains(["stone"]) and idx.contains(["night", "opens"])
    assert not idx.contains(["stone", "night"])
    assert copied_share([poem], idx, 4) == pytest.approx(3 / 8)  # the first three of its eight 4-word runs


def test_the_words_a_poem_was_given_are_not_the_model_s_copies_or_variety():
    # Started with a training line, a poem copied 9 words of it in the table; the copy was the user's.
    idx = index()
    poem = poem_words("love is a lamp left burning, copper moon")  # 6 given words, all a training poem's
    assert idx.longest_copy(poem) == 6 and idx.longest_copy(poem, given=6) == 0
    assert idx.longest_copy(poem, given=5) == 6  # "burning" was the model's, and continued the copy
    assert copied_share([poem], idx, 4, given=6) == 0.0  # "lamp left burning copper", "left burning copper moon"
    assert copied_share([poem], idx, 4, given=5) == pytest.approx(1 / 3)
    assert distinct_n([poem_words("love love love sea")], 1, given=2) == 1.0  # "love sea": the model's two
    m = sample_measures([("love is a lamp", True)], idx, given=4)  # nothing of the model's
    assert m["longest_copy"] is None and m["copied_4gram_share"] is None and m["words_per_poem"] == 4
    # Every poem opens with the start: its bigram, repeated in each, is not the model's repetition.
    assert sample_measures([("the sea glows", True), ("the sea burns", True)], idx, given=2)["distinct_2"] == 1.0


@pytest.mark.parametrize("start, given", [("the salt wind sings of", 5), ("the salt, wind", 3)])  # words, not marks
def test_evaluate_counts_a_start_s_words_as_given(tiny_run, start, given):
    from neuralda.generate import write_poems

    run = Run.open(tiny_run)
    model, _ = run.load_model("best")
    row = evaluate_run(tiny_run, samples=3, words=12, seed=4, start=start)
    poems = write_poems(model, run.vocab, start, 12, 3, None, 4)
    expected = sample_measures(poems, NgramIndex.from_poems(run.poems("train")), given=given)
    assert {k: row[k] for k in expected} == expected


def test_the_share_of_training_poems_scored_is_said_and_never_rounded_to_none_or_all():
    rows = [{"run": "runs/a", "poems_trained_on": 0.004}, {"run": "runs/b", "poems_trained_on": 0.999},
            {"run": "runs/c", "poems_trained_on": 0.5}, {"run": "runs/d", "poems_trained_on": 0.0}]
    [note] = comparability_notes(rows)
    assert note.startswith("runs/a trained on under 1%; runs/b trained on over 99%; runs/c trained on 50% of the")
    # A run shared without its training poems: not known, and said.
    assert comparability_notes([{"run": "runs/e", "poems_trained_on": None}]) == [
        "whether runs/e trained on the poems scored is unknown (no data/train.jsonl)"]

def test_compare_says_when_vocabularies_or_held_out_poems_differ(tiny_run, tmp_path):
    rows = [
        {"vocab_size": 1819, "min_count": 1, "keep_case": False, "heldout_poems": "a"},
        {"vocab_size": 1020, "min_count": 3, "keep_case": False, "heldout_poems": "a"},
    ]
    [note] = comparability_notes(rows)
    assert "1,819 tokens; 1,020 tokens at --min-count 3" in note and "easier task" in note
    assert comparability_notes(rows[:1] * 2) == []
    other = shutil.copytree(tiny_run, tmp_path / "other split")
    val = other / "data" / "val.jsonl"
    val.write_text(val.read_text(encoding="utf-8").splitlines(keepends=True)[0], encoding="utf-8")  # fewer poems
    table = format_compare(compare_rows([str(tiny_run), str(other)], samples=0))
    assert table.splitlines()[-1].startswith("note: the runs are scored on different held-out poems")
    same = format_compare(compare_rows([str(tiny_run), str(other)], samples=0, corpus=str(val)))
    assert "note:" not in same


def test_suffix_array_sorts_every_suffix():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 50):
        text = rng.integers(-1, 3, n)
        expected = sorted(range(n), key=lambda i: tuple(text[i:]))
        assert suffix_array(text).tolist() == expected


def test_distinct_n_on_a_hand_made_case():
    poems = [["a", "b", "a", "b"], ["c"]]
    assert distinct_n(poems, 1) == pytest.approx(3 / 5)
    assert distinct_n(poems, 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n([], 2) is None and distinct_n([["one"]], 2) is None  # nothing to measure: not 0


def test_evaluate_run_gives_every_measure(tiny_run, tmp_path):
    row = evaluate_run(tiny_run, samples=3, words=20)
    keys = (
        "perplexity perplexity_per_word bits_per_char oov_rate copied_4gram_share copied_6gram_share "
        "copied_8gram_share longest_copy distinct_1 distinct_2 ended_share tokens samples run checkpoint epoch"
    )
    assert set(keys.split()) <= set(row)
    assert 1 < row["perplexity"] < 1000 and row["perplexity_per_word"] > row["perplexity"]
    assert row["samples"] == 3 and row["checkpoint"] == "best" and row["corpus"] == "val"
    assert 0 <= row["copied_6gram_share"] <= 1 and row["longest_copy"] >= 1
    other = write_jsonl(tmp_path / "other.jsonl", make_poems(5, seed=9))
    row = evaluate_run(tiny_run, "epoch-2", corpus=other, samples=0)
    assert row["epoch"] == 2 and row["samples"] == 0 and row["tokens"] > 0


def test_a_run_without_held_out_poems_asks_for_a_corpus(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "data" / "val.jsonl").write_text("")
    with pytest.raises(NeuraldaError, match="--corpus"):
        evaluate_run(run, samples=0)


def test_a_run_shared_without_its_data_is_measured_on_a_corpus(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    shutil.rmtree(run / "data")
    other = write_jsonl(tmp_path / "other.jsonl", make_poems(5, seed=9))
    row = evaluate_run(run, corpus=other, samples=0)
    assert row["tokens"] > 0 and row["perplexity"] > 1 and row["samples"] == 0
    with pytest.raises(NeuraldaError, match="train.jsonl"):  # copying is measured against the training poems
        evaluate_run(run, corpus=other, samples=1, words=5)


def test_compare_evaluates_each_spec(tiny_run):
    assert parse_spec("runs/seed:epoch-200") == ("runs/seed", "epoch-200")
    assert parse_spec("runs/seed") == ("runs/seed", "best")
    rows = compare_rows([f"{tiny_run}:epoch-2", str(tiny_run)], samples=2, words=10)
    assert [(r["checkpoint"], r["epoch"]) for r in rows][0] == ("epoch-2", 2)
    assert rows[1]["checkpoint"] == "best"


def test_compare_reads_each_runs_poems_once_in_the_order_asked(tiny_run, tmp_path, monkeypatch):
    """Several checkpoints of a run share its held-out text and its index of training poems (at a million tokens,
    5 s a checkpoint); the rows come in the order the specs were given, runs interleaved."""
    other = shutil.copytree(tiny_run, tmp_path / "other")
    reads = []
    real = Run.poems
    monkeypatch.setattr(Run, "poems", lambda run, split: reads.append((run.path.name, split)) or real(run, split))
    specs = [f"{tiny_run}:epoch-2", f"{other}:last", f"{tiny_run}:best", f"{tiny_run}:last"]
    rows = compare_rows(specs, samples=2, words=10)
    assert [(Path(r["run"]).name, r["checkpoint"]) for r in rows] == [
        (tiny_run.name, "epoch-2"), ("other", "last"), (tiny_run.name, "best"), (tiny_run.name, "last")
    ]
    assert sorted(reads) == sorted((name, split) for name in (tiny_run.name, "other") for split in ("train", "val"))
    assert rows[3] == evaluate_run(str(tiny_run), "last", samples=2, words=10)


def test_a_diverged_runs_perplexity_is_written_short():
    from neuralda.evaluate import format_ppl

    assert [format_ppl(x) for x in (66.5349, 999_999.94, 2.93e111, math.inf)] == ["66.5", "999999.9", "2.93e+111", "inf"]
    table = format_compare([{"run": "r", "checkpoint": "best", "perplexity": 2.93e111, "perplexity_per_word": 1e300}])
    assert "2.93e+111" in table and "1e+300" in table and max(map(len, table.splitlines())) < 120


def test_compare_prints_an_aligned_table():
    row = dict(
        run="runs/seed", checkpoint="epoch-200", epoch=200, perplexity=1012.345, perplexity_per_word=3021.5,
        bits_per_char=2.71828, oov_rate=0.0123, copied_4gram_share=0.5, copied_6gram_share=0.25,
        copied_8gram_share=0.125, longest_copy=31, distinct_1=0.41, distinct_2=0.8, ended_share=0.35,
    )
    ours = dict(row, run="runs/ours", checkpoint="best", epoch=13, perplexity=219.0, longest_copy=None)
    assert format_compare([row, ours]).splitlines() == [
        "run                  epoch     ppl  ppl/word  bits/char   oov  copy4  copy6  copy8  longest  distinct1  distinct2  ended",  # noqa: E501
        "runs/seed:epoch-200    200  1012.3    3021.5      2.718  1.2%  50.0%  25.0%  12.5%       31      0.410      0.800    35%",  # noqa: E501
        "runs/ours:best          13   219.0    3021.5      2.718  1.2%  50.0%  25.0%  12.5%        -      0.410      0.800    35%",  # noqa: E501
    ]


def test_a_character_is_one_word_whatever_its_spacing():
    """Each Chinese character and kana is a word; a space beside it (kept in its token) makes no other word."""
    idx = NgramIndex(poem_words(t) for t in ["古池や 蛙飛び込む 水の音"])
    m = sample_measures([("古池や蛙飛び込む水の音", True)], idx)
    assert m["copied_4gram_share"] == 1.0 and m["longest_copy"] == 11
    assert distinct_n([poem_words("蛙 蛙 蛙蛙")], 1) == 0.25


def test_a_large_perplexity_is_kept_and_only_an_overflow_is_inf():
    """A diverged run's perplexity (10^111 was seen) is reported as the number it is; only past float range is inf."""
    from neuralda.evaluate import perplexity

    assert perplexity(256.0, 1) == pytest.approx(math.exp(256.0))
    assert perplexity(2 * 701.0, 2) == math.inf and perplexity(1.0, 0) == math.inf


def test_longest_copy_counts_a_copy_at_the_very_end():
    """A poem whose only copied word is its last still has a longest copy of 1."""
    assert index().longest_copy(["copper", "quiet", "stone"]) == 1


def test_copied_share_and_distinct_n_count_every_occurrence_across_poems():
    """A run copied twice counts twice; distinct-n pools the poems (two identical poems are half distinct)."""
    run4 = ["by", "the", "sea", "the"]
    assert copied_share([run4, run4], index(), 4) == 1.0
    assert copied_share([run4 + ["copper", "quiet", "hill", "tonight"]] * 2, index(), 4) == pytest.approx(2 / 10)
    assert distinct_n([["a", "b"], ["a", "b"]], 1) == pytest.approx(0.5)
    assert distinct_n([["a", "b", "c"], ["a", "b", "d"]], 2) == pytest.approx(3 / 4)


def test_the_copy_index_keeps_case_for_a_keep_case_run():
    """A --keep-case run's poems are matched with their case against training poems read with theirs."""
    idx = NgramIndex.from_poems([Poem("", "", "Love the Sea and the Salt")], keep_case=True)
    assert idx.contains(["Love", "the", "Sea"]) and not idx.contains(["love", "the", "sea"])


def test_evaluate_measures_its_poems_against_the_training_poems(tiny_run, tmp_path):
    """The copy measures of evaluate are those of the poems written with its settings, against the training split
    (here the held-out split holds those very poems, so measuring against it would read as all copied)."""
    from neuralda.corpus import write_corpus
    from neuralda.generate import SamplingConfig, write_poems

    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    run = Run.open(run_dir)
    model, _ = run.load_model("best")
    sampling = SamplingConfig(temperature=0.5, top_p=1.0)
    poems = write_poems(model, run.vocab, None, 40, 4, sampling, 5)
    write_corpus(run_dir / "data" / "val.jsonl", [Poem("", "", text) for text, _ in poems])
    row = evaluate_run(run_dir, samples=4, words=40, seed=5, sampling=sampling)
    expected = sample_measures(poems, NgramIndex.from_poems(run.poems("train")), given=1)  # each opens with "love"
    assert {k: row[k] for k in expected} == expected and row["copied_8gram_share"] < 1.0


def test_a_run_directory_with_a_colon_in_its_name_is_a_run(tmp_path):
    """runs/2024-05-01T10:00 is a run, not run "runs/2024-05-01T10" at checkpoint "00"."""
    run = tmp_path / "2024-05-01T10:00"
    run.mkdir()
    assert parse_spec(str(run)) == (str(run), "best")
    assert parse_spec(f"{run}:epoch-2") == (str(run), "epoch-2")


@pytest.mark.parametrize("options, message", [
    ({"device": "gpu"}, "unknown device 'gpu'; choose auto, cpu, cuda or mps"),
    ({"checkpoint": None}, "a checkpoint is named by text (best, last or epoch-N), not None"),
    ({"samples": -1}, "samples must be 0 or more, got -1"),  # "n must be 1 or more", an option it has not
])
def test_evaluating_on_a_device_or_checkpoint_that_is_none_is_one_line(tiny_run, options, message):
    """torch's list of every device type it knows, and a regular expression's TypeError, before."""
    with pytest.raises(NeuraldaError, match=f"^{re.escape(message)}$"):
        evaluate_run(tiny_run, **{"samples": 0, **options})
