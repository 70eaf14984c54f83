import json

import pytest
import torch

from conftest import tiny_config
from neuralda.errors import NeuraldaError
from neuralda.evaluate import token_nll
from neuralda.generate import write_poems, writing_steps
from neuralda.models import build_model, default_size, recipe, summary_table
from neuralda.models.gpt import GPT, GPTConfig
from neuralda.run import Run
from neuralda.train import train


def tiny_gpt(block_size: int = 8, layers: int = 2) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, n_layer=layers, n_embd=32, n_head=2, block_size=block_size, dropout=0.0)).eval()


def test_the_cache_gives_the_logits_of_one_call_on_text_longer_than_the_block():
    model = tiny_gpt(block_size=8)
    x = torch.randint(0, 40, (2, 30))
    whole, _ = model(x)
    for step in (1, 5, 7):
        state, parts = None, []
        for i in range(0, x.size(1), step):
            logits, state = model(x[:, i : i + step], state)
            parts.append(logits)
        assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5), step
        assert all(k.shape == v.shape == (2, 2, 7, 16) for k, v in state)  # the block's 7 past positions


def test_writing_on_a_cpu_packs_the_products_in_the_precision_asked_for():
    """bf16 by name, or auto on CPUs with bf16 units (as the LSTMs); the scores come out in float32 either way."""
    from neuralda.train import pick_precision

    model, x = tiny_gpt(), torch.randint(0, 40, (3, 1))
    cpu = torch.device("cpu")
    auto = torch.bfloat16 if pick_precision("auto", "cpu", "gpt") == "bf16" else torch.float32
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32), ("auto", auto)):
        steps = writing_steps(model, cpu, precision)
        assert steps.dtype == dtype and steps(x, None)[0].dtype == torch.float32


def test_each_layer_looks_back_block_size_minus_one_tokens():
    model = tiny_gpt(block_size=8, layers=2)
    x = torch.randint(0, 40, (1, 20))
    changed = x.clone()
    changed[0, :5] = (x[0, :5] + 1) % 40  # two layers of 7 tokens back from token 19 reach token 5, not 4
    assert torch.allclose(model(x)[0][0, -1], model(changed)[0][0, -1], atol=1e-5)
    changed[0, 5] = (x[0, 5] + 1) % 40
    assert not torch.allclose(model(x)[0][0, -1], model(changed)[0][0, -1], atol=1e-5)


def test_tied_embedding_is_counted_once_and_initialised_at_002():
    torch.manual_seed(0)
    V, d, L = 1000, 128, 3
    model = build_model("gpt", V, d, L, 0.2)
    assert model.decoder.weight is model.wte.weight
    assert model.cfg.n_head == 2  # heads of 64 units
    per_block = 12 * d * d + 2 * d  # qkv 3d^2, projection d^2, MLP 8d^2, two LayerNorm weights
    assert sum(p.numel() for p in model.parameters()) == V * d + L * per_block + d
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / (2 * L) ** 0.5, rel=0.05)
    table = summary_table(model, "gpt")
    assert f"Total params: {V * d + L * per_block + d:,}" in table and "block_2 (Block, 2 heads)" in table


def test_a_width_that_does_not_split_into_heads_is_a_user_error():
    with pytest.raises(NeuraldaError, match="--hidden 200"):
        build_model("gpt", 50, 200, 2, 0.1)


def test_sizes_and_recipe_follow_the_corpus():
    assert default_size("gpt", 10_000) == (128, 2)
    assert default_size("gpt", 100_000) == (256, 4)
    r = recipe("gpt")
    assert (r.optimizer, r.weight_decay, r.stateful, r.seq_len) == ("adamw", 0.1, False, 128)


def test_held_out_text_longer_than_the_block_is_scored_through_the_sliding_cache():
    model = tiny_gpt(block_size=8, layers=1)
    ids = torch.randint(0, 40, (400,))
    nll, count = token_nll(model, ids)
    assert count == 399 and 0 < nll / count < 10


def test_a_tiny_gpt_run_learns_and_writes(tmp_path, corpus_file):
    out = tmp_path / "gpt"
    cfg = tiny_config(corpus_file, out, arch="gpt", epochs=2, hidden=32, layers=1, seq_len=16, lr=3e-3)
    train(cfg, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["val_loss"] < rows[0]["val_loss"]
    run = Run.open(out)
    model, meta = run.load_model("best")
    assert meta["arch"] == "gpt" and isinstance(model, GPT)
    (poem, _), = write_poems(model, run.vocab, "love", words=150, seed=1)  # longer than the 128-token block
    assert poem.startswith("love")


def test_a_gpt_in_eval_mode_drops_nothing():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, n_layer=2, n_embd=32, n_head=2, block_size=8, dropout=0.5)).eval()
    x = torch.randint(0, 40, (2, 12))
    assert torch.equal(model(x)[0], model(x)[0])


def test_a_head_of_an_odd_size_is_a_user_error():
    with pytest.raises(NeuraldaError, match="--hidden 130"):
        build_model("gpt", 50, 130, 1, 0.1)  # 2 heads of 65


def test_rope_frequencies_and_the_final_norm():
    model = tiny_gpt()
    d = 16  # head size
    assert torch.allclose(model.inv_freq, 10_000 ** (-torch.arange(0, d, 2) / d))
    h, _ = model.features(torch.randint(0, 40, (2, 5)))
    assert torch.allclose(h.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(h.var(-1, unbiased=False), torch.ones(2, 5), atol=0.05)  # eps: the embeddings are small


def test_every_residual_projection_is_scaled():
    torch.manual_seed(0)
    model = build_model("gpt", 100, 128, 3, 0.1)
    for block in model.blocks:
        for p in (block.attn.proj.weight, block.mlp.proj.weight):
            assert p.std().item() == pytest.approx(0.02 / 6**0.5, rel=0.1)


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.02), (torch.float32, 1e-5)])
def test_packed_steps_follow_the_gpt_token_by_token_and_a_row_alone_is_the_row_in_a_batch(dtype, tolerance):
    """Writing on a CPU goes through GPTSteps: the model's logits one token at a time, past its window too, and the
    same bits for a poem alone as in a batch (the model's own MKL products differed at every step)."""
    from neuralda.models.gpt import GPTSteps

    model = tiny_gpt(block_size=8)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # scores far from uniform, so a wrong product would show
        ids = torch.randint(0, 40, (3, 20))
        expected, _ = model(ids)
        steps = GPTSteps(model, dtype)
        assert steps.batch_invariant
        batch = alone = None
        got, lone = [], []
        for t in range(ids.size(1)):
            logits, batch = steps(ids[:, t : t + 1], batch)
            got.append(logits)
            logits, alone = steps(ids[:1, t : t + 1], alone)
            lone.append(logits)
    got = torch.cat(got, 1)
    assert expected.std() > 0.5
    assert torch.allclose(got.softmax(-1), expected.softmax(-1), atol=tolerance)
    assert torch.equal(torch.cat(lone, 1), got[:1])
    assert isinstance(writing_steps(model, torch.device("cpu"), "fp32"), GPTSteps)
