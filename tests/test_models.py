import pytest
import torch

from neuralda.errors import NeuraldaError
from neuralda.models import build_model, recipe, summary_table
from neuralda.models.lstm import PoetLSTM, SeedLSTM, SingleBiasLSTM, ThouttLSTM


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cls", [SeedLSTM, ThouttLSTM])
def test_seed_and_thoutt_have_the_keras_parameter_count(cls):
    assert params(cls(5437)) == 11_870_525


def test_summary_table_matches_the_seed():
    table = summary_table(build_model("seed", 5437, 512, 3, 0.3), "seed")
    assert "Total params: 11,870,525" in table
    assert "Non-trainable params: 0" in table
    assert table.count("(LSTM)") == 3
    assert "2783744" in table and "2789181" in table  # embedding and dense rows


def test_single_bias_lstm_has_one_bias_and_matches_a_two_bias_lstm():
    lstm = SingleBiasLSTM(8, 16)
    names = {n for n, _ in lstm.named_parameters()}
    assert names == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0"}
    assert "bias_hh_l0" not in lstm.state_dict()
    out, (h, c) = lstm(torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 16) and h.shape == (1, 2, 16)
    # Same as a two-bias LSTM whose second bias is zero.
    ref = torch.nn.LSTM(8, 16, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"):
            getattr(ref, name).copy_(getattr(lstm, name))
        ref.bias_hh_l0.zero_()
    x = torch.randn(3, 4, 8)
    assert torch.allclose(lstm(x)[0], ref(x)[0], atol=1e-6)


def test_keras_forget_bias_is_one():
    model = SeedLSTM(50, embed=8, hidden=8, layers=1)
    bias = model.lstms[0].bias_ih_l0
    assert torch.all(bias[8:16] == 1) and torch.all(bias[:8] == 0)
    # Our lstm keeps PyTorch's two biases, each starting its forget gate at 1: 2 in all (measured to train better).
    lstm = PoetLSTM(50, hidden=8, layers=1).lstms[0]
    total = lstm.bias_ih_l0 + lstm.bias_hh_l0
    assert torch.all(total[8:16] == 2) and torch.all(total[:8] == 0) and torch.all(total[16:] == 0)


def test_thoutt_lstm_kernels_are_one_glorot_matrix_as_in_tf1():
    """BasicLSTMCell (TF 1.0) draws [input, h] -> 4 * units as one glorot-uniform matrix: no orthogonal kernel."""
    import math

    torch.manual_seed(0)
    lstm = ThouttLSTM(100, embed=64, hidden=64, layers=2).lstms[1]
    limit = math.sqrt(6 / (64 + 64 + 4 * 64))
    for w in (lstm.weight_ih_l0, lstm.weight_hh_l0):
        assert w.abs().max() <= limit and w.std() > 0.9 * limit / math.sqrt(3)
    assert torch.all(lstm.bias_ih_l0[64:128] == 1) and torch.all(lstm.bias_ih_l0[:64] == 0)


def test_our_lstm_ties_embedding_and_output():
    model = PoetLSTM(100, hidden=16, layers=2)
    assert model.decoder.weight is model.embedding.weight
    assert params(model) == 100 * 16 + 2 * 4 * (16 * 32 + 2 * 16) + 100


def test_state_carries_across_calls():
    torch.manual_seed(0)
    model = PoetLSTM(30, hidden=8, layers=2).eval()
    x = torch.randint(0, 30, (2, 6))
    whole, _ = model(x)
    first, state = model(x[:, :3])
    second, _ = model(x[:, 3:], state)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-5)


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(NeuraldaError, match="choose one of .*lstm"):
        recipe("transformerxl")


def test_recipes_reproduce_the_published_setups():
    seed, thoutt = recipe("seed"), recipe("thoutt")
    assert (seed.batch_size, seed.seq_len, seed.lr, seed.dropout, seed.stateful) == (512, 30, 1e-3, 0.3, False)
    assert (thoutt.batch_size, thoutt.seq_len, thoutt.clip_value, thoutt.stateful) == (512, 30, 1.0, True)
    assert thoutt.carry_state  # as the brief has it; --no-carry-state as got-book-6's code ran
    assert seed.patience == 0 and thoutt.patience == 0 and recipe("lstm").patience > 0
    assert seed.save_at == (200, 400)


def test_packed_steps_write_a_lone_row_as_a_pair_where_its_product_would_differ(monkeypatch):
    from neuralda.models import lstm

    packed = lstm.packed_matmul

    def lone_rows_differ(weight, dtype, bias=None):  # as where oneDNN takes another kernel for one row
        f = packed(weight, dtype, bias)
        return lambda x: f(x) + (len(x) == 1) * 1e-3

    torch.manual_seed(0)
    model = build_model("lstm", 50, 16, 2, 0.0).eval()
    ids = torch.randint(0, 50, (3, 6))
    monkeypatch.setattr(lstm, "packed_matmul", lone_rows_differ)
    steps = lstm.LSTMSteps(model, torch.float32)
    assert steps.min_rows == 2
    batch = alone = None
    for t in range(ids.size(1)):
        (b, batch), (a, alone) = steps(ids[:, t : t + 1], batch), steps(ids[:1, t : t + 1], alone)
        assert torch.equal(a, b[:1])


def test_steps_without_onednn_s_packed_products_are_not_batch_invariant(monkeypatch):
    """A build without them writes with plain products, whose rows round otherwise in other batch sizes: a poem then
    need not be the one written alone, and the server writes each request alone."""
    from neuralda import models
    from neuralda.models.gpt import GPTSteps
    from neuralda.models.lstm import LSTMSteps

    def missing(*args):
        raise RuntimeError("this build has no packed products")

    torch.manual_seed(0)
    lstm, gpt = build_model("lstm", 50, 16, 2, 0.0).eval(), build_model("gpt", 50, 64, 1, 0.0).eval()
    assert LSTMSteps(lstm, torch.float32).batch_invariant and GPTSteps(gpt, torch.float32).batch_invariant
    try:
        with monkeypatch.context() as m:
            m.setattr(torch.ops.mkldnn, "_reorder_linear_weight", missing)
            models.packed_products.cache_clear()
            steps = LSTMSteps(lstm, torch.float32)
            assert not steps.batch_invariant and not GPTSteps(gpt, torch.float32).batch_invariant
            ids = torch.randint(0, 50, (3, 6))
            state = None
            for t in range(ids.size(1)):  # the plain products still write what the model says
                logits, state = steps(ids[:, t : t + 1], state)
            assert torch.allclose(logits[:, 0], lstm(ids)[0][:, -1], atol=1e-5)
    finally:
        models.packed_products.cache_clear()


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.02), (torch.float32, 1e-5)])
@pytest.mark.parametrize("arch", ["seed", "thoutt", "lstm"])
def test_packed_steps_follow_every_lstm_token_by_token(arch, dtype, tolerance):
    from neuralda.models.lstm import LSTMSteps

    torch.manual_seed(0)
    model = build_model(arch, 300, 64, 2, 0.3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # scores far from uniform, so a wrong gate or bias would show
        ids = torch.randint(0, 300, (3, 20))
        expected, _ = model(ids)
        steps, state, got = LSTMSteps(model, dtype), None, []
        for t in range(ids.size(1)):
            logits, state = steps(ids[:, t : t + 1], state)
            got.append(logits)
        alone, state = [], None
        for t in range(ids.size(1)):
            logits, state = steps(ids[:1, t : t + 1], state)
            alone.append(logits)
    got = torch.cat(got, 1)
    assert expected.std() > 0.5
    assert torch.allclose(got.softmax(-1), expected.softmax(-1), atol=tolerance)
    assert torch.equal(torch.cat(alone, 1), got[:1])  # the same bits alone as in a batch


def test_build_model_passes_dropout_to_every_arch():
    assert build_model("lstm", 50, 16, 2, 0.1).drop.p == 0.1
    assert build_model("seed", 50, 16, 2, 0.1).drop.p == 0.1
    assert build_model("thoutt", 50, 16, 2, 0.1).drop.p == 0.1
    assert build_model("gpt", 50, 64, 1, 0.1).cfg.dropout == 0.1


def test_each_lstm_drops_where_its_source_did():
    """Seed: each LSTM's input (Keras dropout=); thoutt: each LSTM's output (DropoutWrapper); ours: both."""
    torch.manual_seed(0)
    x = torch.ones(4, 6, 16)
    seed, thoutt, ours = (build_model(a, 50, 16, 2, 0.5).train() for a in ("seed", "thoutt", "lstm"))
    assert not torch.equal(seed._between(0, x), x) and torch.equal(seed._between(2, x), x)
    assert torch.equal(thoutt._between(0, x), x) and not torch.equal(thoutt._between(2, x), x)
    out = thoutt._between(1, x)
    assert not torch.equal(out, out[:, :1].expand_as(out))  # got-book-6 draws a fresh mask at every step
    assert not torch.equal(ours._between(0, x), x) and not torch.equal(ours._between(2, x), x)


def test_locked_dropout_shares_one_mask_over_time_and_keeps_the_mean():
    from neuralda.models.lstm import LockedDropout

    torch.manual_seed(0)
    out = LockedDropout(0.5).train()(torch.ones(64, 7, 32))
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same units dropped at every step
    assert set(out.unique().tolist()) == {0.0, 2.0}


def test_our_embedding_dropout_drops_whole_words_a_quarter_as_often():
    torch.manual_seed(0)
    model = PoetLSTM(2000, hidden=8, layers=1, dropout=0.4).train()
    rows = model._embed(torch.arange(2000)[None])[0]
    dropped = (rows == 0).all(1)
    assert torch.equal((rows == 0).any(1), dropped)  # a word is dropped whole or not at all
    assert 0.06 < dropped.float().mean() < 0.14  # 0.4 / 4


def test_keras_and_tf1_initialisers():
    torch.manual_seed(0)
    seed, thoutt, ours = SeedLSTM(500, 64, 64, 2), ThouttLSTM(500, 64, 64, 2), PoetLSTM(500, 64, 2)
    w = seed.lstms[0].weight_hh_l0  # Keras: one orthogonal recurrent kernel over the four gates
    assert torch.allclose(w.T @ w, torch.eye(64), atol=1e-4)
    assert seed.embedding.weight.abs().max() <= 0.05 and seed.embedding.weight.abs().max() > 0.049
    limit = (6 / (500 + 64)) ** 0.5  # embed_sequence's glorot
    assert thoutt.embedding.weight.abs().max() <= limit and thoutt.embedding.weight.abs().max() > 0.95 * limit
    assert ours.embedding.weight.abs().max() <= 0.1 and ours.embedding.weight.abs().max() > 0.099
    for model in (seed, thoutt, ours):
        assert torch.all(model.decoder.bias == 0)


def test_our_lstm_size_follows_the_corpus():
    from neuralda.models import default_size

    assert default_size("lstm", 29_999) == (128, 2) and default_size("lstm", 30_000) == (256, 2)
    assert default_size("lstm", 300_000) == (512, 2)
    assert default_size("seed", 10) == default_size("thoutt", 10) == (512, 3)


@pytest.mark.parametrize("arch", ["seed", "lstm", "gpt"])
def test_summary_rows_add_up_to_the_total(arch):
    model = build_model(arch, 300, 64, 2, 0.1)
    assert sum(row[-1] for row in model.summary_rows()) == params(model)
    table = summary_table(model, arch)
    assert f"Trainable params: {params(model):,}" in table and "dense (Dense" in table


def test_recipes_train_for_the_published_epochs_and_ours_as_documented():
    seed, thoutt, ours, gpt = (recipe(a) for a in ("seed", "thoutt", "lstm", "gpt"))
    assert seed.epochs == thoutt.epochs == 400 and thoutt.save_at == (200, 400)
    assert (seed.optimizer, seed.clip_value, seed.clip_norm, seed.schedule) == ("adam", None, None, "none")
    assert (ours.optimizer, ours.weight_decay, ours.clip_norm, ours.schedule) == ("adamw", 0.01, 0.5, "plateau")
    assert (gpt.clip_norm, gpt.schedule, gpt.batch_size) == (1.0, "plateau", 16)


def test_building_an_unknown_arch_lists_the_known_ones():
    with pytest.raises(NeuraldaError, match="choose one of .*gpt"):
        build_model("transformerxl", 50, 16, 1, 0.1)


@pytest.mark.parametrize("hidden, layers", [(2**40, 1), (10**30, 1), (8, 10**7), (0, 1)])
def test_sizes_past_any_machine_are_refused_before_building(hidden, layers):
    # hidden 2**40 was torch's "Storage size calculation overflowed" traceback; layers 10**7 built for hours.
    with pytest.raises(NeuraldaError, match=r"each from 1 up to 268,435,456 and 1,024"):
        build_model("lstm", 10, hidden, layers, 0.0)


def test_a_run_whose_config_json_asks_for_such_sizes_is_refused(tmp_path, tiny_run):
    import json
    import shutil

    from neuralda.run import Run

    run = shutil.copytree(tiny_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "layers": 10**7}))
    with pytest.raises(NeuraldaError, match=r"config\.json: layers should be a whole number from 1 to 1,024, not"):
        Run.open(run)
