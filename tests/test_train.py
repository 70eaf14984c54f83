import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_poems, tiny_config, write_jsonl
from neuralda.errors import NeuraldaError
from neuralda.run import Run, read_checkpoint
from neuralda.train import _stream, batches, parse_duration, train

QUIET = dict(log=lambda s: None)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_lowers_the_loss_and_writes_the_run_directory(tiny_run):
    rows = metrics(tiny_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    for key in ("epoch", "step", "train_loss", "val_loss", "val_ppl", "tokens_per_s", "lr", "seconds"):
        assert key in rows[0]
    assert rows[0]["device"] == "cpu" and rows[0]["precision"] in ("fp32", "bf16")  # what "auto" chose
    run = Run.open(tiny_run)
    assert run.checkpoints() == ["best", "last", "epoch-2", "epoch-4"]
    config = run.config
    assert config["arch"] == "lstm" and config["hidden"] == 32 and config["batch_size"] == 8
    assert config["weight_decay"] == 0.01 and config["save_at"] == [2, 4]  # from the recipe
    samples = [json.loads(line) for line in (tiny_run / "samples.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in samples] == [2, 4] and all(s["poem"].startswith("love") for s in samples)
    # The vocabulary comes from the training poems only.
    train_words = {t for p in run.poems("train") for t in p.text.lower().split()}
    assert len(run.vocab) <= len(train_words) + 20


def test_resume_finishes_as_an_uninterrupted_run_would(tmp_path, corpus_file):
    whole = tmp_path / "whole"
    train(tiny_config(corpus_file, whole, epochs=4), **QUIET)
    part = tmp_path / "part"
    train(tiny_config(corpus_file, part, epochs=2), **QUIET)
    train(tiny_config("", part, epochs=4), resume=True, **QUIET)
    a, _ = read_checkpoint(whole / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(part / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "val_seconds", "tokens_per_s")} for r in rows]  # noqa: E731
    assert strip(metrics(whole)) == strip(metrics(part))
    samples = lambda run: (run / "samples.jsonl").read_text().splitlines()  # noqa: E731
    assert samples(whole) == samples(part) and '"checkpoint": "last"' in samples(part)[-1]


@pytest.mark.parametrize("arch", ["lstm", "thoutt", "seed", "gpt"])  # streams carrying their state; windows
def test_a_batch_run_a_group_of_rows_at_a_time_trains_the_same_model(tmp_path, corpus_file, monkeypatch, arch):
    """On a CPU a big batch runs its forward and backward a few rows at a time, to hold less memory: the model it
    trains is the one a single forward and backward of the batch trains, each group carrying its own rows' state."""
    import neuralda.train as training

    rows = []
    forward = training.LossModule.forward
    monkeypatch.setattr(training.LossModule, "forward", lambda self, x, *a: rows.append(len(x)) or forward(self, x, *a))
    trained, groups, losses = {}, {}, {}
    for tokens in (10**9, 40):  # batches of 8 x 16 whole, or in groups of 2 rows
        monkeypatch.setattr(training, "CPU_GROUP_TOKENS", tokens)
        rows.clear()
        out = tmp_path / str(tokens)
        train(tiny_config(corpus_file, out, arch=arch, epochs=2, dropout=0.0, precision="fp32"), **QUIET)
        trained[tokens], _ = read_checkpoint(out / "checkpoints" / "last.safetensors")
        groups[tokens] = max(rows)
        losses[tokens] = [row["train_loss"] for row in metrics(out)]
    assert groups == {10**9: 8, 40: 2}
    assert losses[40] == pytest.approx(losses[10**9], rel=1e-5)
    whole, grouped = trained[10**9], trained[40]
    assert whole.keys() == grouped.keys()
    for key in whole:
        assert torch.allclose(whole[key], grouped[key], atol=1e-5), key


@pytest.mark.parametrize("arch", ["seed", "gpt"])
def test_whole_logits_train_the_model_the_chunked_loss_trains(tmp_path, corpus_file, monkeypatch, arch):
    """On a GPU the loss takes the logits whole (plain cross-entropy) where they fit: the same model as the chunks."""
    import neuralda.evaluate
    import neuralda.train as training

    monkeypatch.setattr(neuralda.evaluate, "CPU_LOSS_CHUNK", 3 * 64)  # chunks of 3 rows over the tiny vocabulary
    trained, losses = {}, {}
    for whole in (False, True):
        monkeypatch.setattr(training, "whole_logits", lambda h, rows, vocab_size: whole)
        out = tmp_path / str(whole)
        train(tiny_config(corpus_file, out, arch=arch, epochs=2, dropout=0.0, precision="fp32"), **QUIET)
        trained[whole], _ = read_checkpoint(out / "checkpoints" / "last.safetensors")
        losses[whole] = [row["train_loss"] for row in metrics(out)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for key in trained[False]:
        assert torch.allclose(trained[True][key], trained[False][key], atol=1e-5), key


def test_a_resumed_optimizer_keeps_its_own_kernels():
    """Saved on one machine, resumed on another: the step runs the kernels chosen there (fused on a GPU)."""
    from neuralda.train import load_optimizer, optimizer_tensors

    w = torch.nn.Parameter(torch.ones(3))
    saved = torch.optim.Adam([w], lr=0.1)
    w.sum().backward()
    saved.step()
    tensors, groups = optimizer_tensors(saved)
    resumed = torch.optim.Adam([w], lr=0.5, fused=True)
    load_optimizer(resumed, tensors, groups)
    assert resumed.param_groups[0]["fused"] is True and resumed.param_groups[0]["lr"] == 0.1
    resumed.step()
    assert int(resumed.state[w]["step"]) == 2


@pytest.mark.parametrize("kind, weight_decay", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.1)])
def test_the_optimizer_steps_as_torchs_own(kind, weight_decay):
    """make_optimizer's Adam skips torch.optim's compiler wrappers: the same steps, state and saved state."""
    from neuralda.train import make_optimizer

    models, optimizers = [], []
    for own in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        stock = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        opt = (make_optimizer(model, {"optimizer": kind, "lr": 0.01, "weight_decay": weight_decay}) if own
               else stock(model.parameters(), lr=0.01, weight_decay=weight_decay))
        assert isinstance(opt, stock)
        x = torch.randn(16, 4)
        for _ in range(5):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        models.append(model)
        optimizers.append(opt)
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.equal(a, b)
    own, stock = (o.state_dict() for o in optimizers)
    assert own["param_groups"] == stock["param_groups"]
    for i, state in stock["state"].items():
        assert all(torch.equal(state[k], own["state"][i][k]) for k in state)


@pytest.mark.parametrize("arch, epsilon_hat", [("seed", 1e-7), ("thoutt", 1e-8)])
def test_the_published_recipes_step_as_keras_and_tensorflow_1_adam(arch, epsilon_hat):
    """Keras and TF1 add epsilon to sqrt(v) before the bias correction: their update is lr * sqrt(1 - b2^t) /
    (1 - b1^t) * m / (sqrt(v) + epsilon), written out here in float64, with gradients as small as the seed's."""
    import math

    from neuralda.models import recipe
    from neuralda.train import make_optimizer

    r = recipe(arch)
    assert (r.optimizer, r.epsilon_hat) == ("adam", epsilon_hat) and recipe("lstm").epsilon_hat is None
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, dtype=torch.float64))
    cfg = {"optimizer": "adam", "lr": r.lr, "weight_decay": 0.0, "epsilon_hat": r.epsilon_hat}
    opt = make_optimizer(torch.nn.ParameterList([w]), cfg)
    expected, m, v = w.detach().clone(), torch.zeros(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)
    for t in range(1, 8):
        g = torch.randn(64, dtype=torch.float64) * 10.0 ** -torch.randint(6, 10, (64,))
        w.grad = g.clone()
        opt.step()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        expected -= r.lr * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (v.sqrt() + epsilon_hat)
        assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-15)
    assert opt.state_dict()["param_groups"][0]["epsilon_hat_steps"] == 7  # a checkpoint keeps the count


def test_training_never_imports_the_compiler(tmp_path, corpus_file):
    """torch.optim's wrappers import torch._dynamo at their first call (1-5 s at each training's start); a run
    without --compile, resumed too, never needs it."""
    code = (
        "import sys\n"
        "from conftest import tiny_config\n"
        "from neuralda.train import train\n"
        f"train(tiny_config({str(corpus_file)!r}, {str(tmp_path / 'run')!r}, epochs=1), log=print)\n"
        f"train(tiny_config('', {str(tmp_path / 'run')!r}, epochs=2), resume=True, log=print)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "False"


@pytest.mark.parametrize("save_every, lasts", [(None, [0, 2, 4]), (0, [0, 1, 2, 3, 4])])
def test_checkpoints_are_written_every_interval_and_at_the_end(tmp_path, corpus_file, monkeypatch, save_every, lasts):
    import neuralda.train as t

    written = []
    real = t.save_checkpoint

    def recorded(path, tensors, meta):
        written.append((path.stem, meta["epoch"]))
        real(path, tensors, meta)

    monkeypatch.setattr(t, "save_checkpoint", recorded)
    result = train(tiny_config(corpus_file, tmp_path / "run", epochs=4, save_every=save_every, save_at=(2,)), **QUIET)
    # 30 s by default, and these epochs take far less: at the start, at the saved epoch 2 and at the end.
    assert [e for name, e in written if name == "last"] == lasts
    assert ("epoch-2", 2) in written
    run = Run.open(tmp_path / "run")
    best = [r["epoch"] for r in run.metrics() if r["best"]][-1]
    assert run.load_model("best")[1]["epoch"] == best == result.best_epoch
    assert run.load_model("last")[1]["epoch"] == 4 and [r["epoch"] for r in run.metrics()] == [1, 2, 3, 4]


def test_resume_drops_metrics_written_after_the_last_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=2), **QUIET)
    with open(out / "metrics.jsonl", "a") as f:  # as if killed after logging epoch 3, before its checkpoint
        f.write(json.dumps({"epoch": 3}) + "\n")
    train(tiny_config("", out, epochs=3), resume=True, **QUIET)
    assert [r["epoch"] for r in metrics(out)] == [1, 2, 3]


def test_resume_given_the_corpus_starts_a_run_killed_before_its_config_was_written(tmp_path, corpus_file):
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    for name in ("config.json", "vocab.json", "metrics.jsonl", "samples.jsonl", "checkpoints"):  # an early kill
        shutil.rmtree(out / name) if name == "checkpoints" else (out / name).unlink()
    partial = [out / "data" / ".val.jsonl.k2x9_q0a.tmp", out / ".vocab.json.q8z1m3rt.tmp"]  # atomic writes it cut
    for path in partial:
        path.write_text('{"text": "ha')
    said = []
    result = train(tiny_config(corpus_file, out, epochs=1), resume=True, log=said.append)
    assert result.epochs == 1 and "last" in Run.open(out).checkpoints()
    assert [path for path in partial if path.exists()] == []
    assert f"{out} held no run yet (killed before its config.json was written): started it" in said
    assert said[-1].startswith("done after 1 epoch (")  # not "1 epochs"
    said.clear()  # a folder not there yet was never killed
    train(tiny_config(corpus_file, tmp_path / "new", epochs=1), resume=True, log=said.append)
    assert f"{tmp_path / 'new'} held no run yet: started it" in said


@pytest.mark.parametrize("name", ["data/train.jsonl", "data/val.jsonl", "vocab.json"])
def test_a_restart_never_replaces_a_file_of_the_user_s_of_a_run_s_name(tmp_path, corpus_file, name):
    """"-o mine is not empty ...; add --resume to start again a run killed there" and --resume replaced the user's
    data/train.jsonl (their only copy of a poem) or vocab.json with the new run's."""
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / name).write_text('{"text": "my only copy of this poem"}\n')
    with pytest.raises(NeuraldaError, match=f"holds {name}, which this run would replace with other contents"):
        train(tiny_config(corpus_file, out, epochs=1), resume=True, **QUIET)
    assert (out / name).read_text() == '{"text": "my only copy of this poem"}\n'
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["data", name]
    (tmp_path / "other").mkdir()
    with pytest.raises(NeuraldaError, match="no config.json"):  # without the corpus there is nothing to start
        train(tiny_config("", tmp_path / "other", epochs=1), resume=True, **QUIET)


def test_a_resume_removes_the_partial_files_a_killed_run_left(tmp_path, corpus_file):
    """SIGKILL during an atomic write leaves its temporary file: a partial checkpoint each time, never read again."""
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    partial = [out / "checkpoints" / ".last.safetensors.k2x9_q0a.tmp", out / "data" / ".val.jsonl.0a1b2c3d.tmp",
               out / ".metrics.jsonl.zz81kq4m.tmp"]
    for path in partial:
        path.write_bytes(b"\0" * 1000)
    train(tiny_config("", out, epochs=2), resume=True, **QUIET)
    assert [path for path in partial if path.exists()] == []
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.safetensors", "last.safetensors"]


@pytest.mark.parametrize("lost", ["checkpoints/last.safetensors", "config.json", "checkpoints"])
def test_a_run_that_trained_is_never_trained_again_from_nothing(tmp_path, corpus_file, lost):
    """Without ``last`` (or config.json, or every checkpoint) a resume would start over onto the run's best checkpoint
    and metrics."""
    import shutil

    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=2, save_at=(1,)), **QUIET)
    shutil.rmtree(out / lost) if (out / lost).is_dir() else (out / lost).unlink()
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(NeuraldaError, match="cannot be resumed"):
        train(tiny_config(corpus_file, out, epochs=3), resume=True, **QUIET)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept


def test_a_run_resumes_from_another_folder_given_the_same_corpus(tmp_path, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(tiny_config(corpus_file.name, Path("run"), epochs=1), **QUIET)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert train(tiny_config("../" + corpus_file.name, Path("../run"), epochs=2), resume=True, **QUIET).epochs == 2


def test_a_resume_refuses_epochs_and_saves_behind_it(tmp_path, corpus_file):
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=3, save_at=(2,)), **QUIET)
    config = (out / "config.json").read_text()
    with pytest.raises(NeuraldaError, match="--epochs 2: .* has trained 3 epochs already"):
        train(tiny_config("", out, epochs=2), resume=True, **QUIET)
    with pytest.raises(NeuraldaError, match="--save-at 1,3: .* is past epoch 3 .* did not keep those weights"):
        train(tiny_config("", out, epochs=5, save_at=(5, 3, 1, 2, 3)), resume=True, **QUIET)  # in any order
    assert (out / "config.json").read_text() == config  # nothing recorded that did not happen
    train(tiny_config("", out, epochs=4, save_at=(2, 4)), resume=True, **QUIET)  # epoch 2 is kept: the same again
    assert {"epoch-2", "epoch-4"} <= set(Run.open(out).checkpoints())


@pytest.mark.parametrize("damage", ["checkpoints/last.safetensors", "data/train.jsonl"])
def test_a_refused_resume_records_none_of_its_settings(tmp_path, corpus_file, damage):
    """config.json took a resume's --epochs and --patience before its checkpoint and data were read: a later plain
    --resume then trained to the refused --epochs."""
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    config, path = (out / "config.json").read_text(), out / damage
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(NeuraldaError):
        train(tiny_config("", out, epochs=5, patience=0), resume=True, **QUIET)
    assert (out / "config.json").read_text() == config


def test_an_epoch_checkpoint_written_after_last_is_kept_on_resume(tmp_path, corpus_file):
    """Killed while writing 'last' just after 'epoch-2': a resume drops epoch 2's metrics and sample, which it writes
    again, but deletes no weights; reaching epoch 2, it writes the same ones."""
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1, save_at=(2,)), **QUIET)
    after = tmp_path / "after"
    train(tiny_config(corpus_file, after, epochs=2, save_at=(2,)), **QUIET)
    epoch_2 = out / "checkpoints" / "epoch-2.safetensors"
    shutil.copyfile(after / "checkpoints" / "epoch-2.safetensors", epoch_2)
    weights = read_checkpoint(epoch_2)[0]
    train(tiny_config("", out, epochs=1), resume=True, **QUIET)  # stops where it is
    assert all(torch.equal(weights[k], v) for k, v in read_checkpoint(epoch_2)[0].items())
    train(tiny_config("", out, epochs=2), resume=True, **QUIET)
    assert all(torch.equal(weights[k], v) for k, v in read_checkpoint(epoch_2)[0].items())


def test_a_second_ctrl_c_once_the_new_best_is_written_keeps_the_older_one_aside(tmp_path, corpus_file, monkeypatch):
    """Ctrl-C writes the best weights held back (epoch 4, 'last' being epoch 2); a second Ctrl-C just after they are
    in place dropped the older 'best' kept aside, and a resume that stopped at epoch 2 kept epoch 4's as its best."""
    import neuralda.train as trainer

    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=2, patience=0), **QUIET)
    train_epoch, save = trainer.Trainer._train_epoch, trainer.save_checkpoint

    def ctrl_c_at_epoch_5(self, epoch, progress):
        if epoch == 5:
            raise KeyboardInterrupt
        return train_epoch(self, epoch, progress)

    def ctrl_c_again_once_best_is_written(path, *args):
        save(path, *args)
        if path.name == "best.safetensors":
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "_train_epoch", ctrl_c_at_epoch_5)
    monkeypatch.setattr(trainer, "save_checkpoint", ctrl_c_again_once_best_is_written)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("", out, epochs=6, save_every=1e9, patience=0), resume=True, **QUIET)
    monkeypatch.undo()
    assert Run.open(out).checkpoint_meta("best")["epoch"] == 4
    train(tiny_config("", out, epochs=2), resume=True, **QUIET)
    assert Run.open(out).checkpoint_meta("best")["epoch"] <= 2 and "epoch-4" in Run.open(out).checkpoints()

def test_an_output_through_a_symlink_loop_is_one_line(tmp_path, corpus_file):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(NeuraldaError, match="loop/run: a symbolic link on the way loops back to itself"):
        train(tiny_config(corpus_file, tmp_path / "loop" / "run", epochs=1), **QUIET)


def test_a_save_at_past_the_epochs_is_said(tmp_path, corpus_file):
    said = []
    train(tiny_config(corpus_file, tmp_path / "run", epochs=1, save_at=(1, 4, 5)), log=said.append)
    assert "note: --save-at 4,5 is past --epochs 1: saved if a --resume gets there" in said


def samples(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_resuming_a_finished_run_keeps_the_sample_of_last(tmp_path, corpus_file):
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=2), **QUIET)
    finished = samples(out)
    assert [(s["epoch"], s["checkpoint"]) for s in finished] == [(2, "last")]
    train(tiny_config("", out, epochs=2), resume=True, **QUIET)  # nothing left to train
    assert samples(out) == finished
    (out / "samples.jsonl").write_text("")  # as if killed after the last checkpoint, before its sample
    train(tiny_config("", out, epochs=2), resume=True, **QUIET)
    assert samples(out) == finished


def test_resume_refuses_options_it_cannot_change(tmp_path, corpus_file):
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(NeuraldaError, match=r"^--lr, --keep-case cannot change when resuming \(.*run was trained "
                       r"with --lr 0.003, --keep-case false\); start a new run with another -o$"):
        train(tiny_config("", out, epochs=2, lr=0.5, keep_case=True), resume=True, **QUIET)
    other = write_jsonl(tmp_path / "other.jsonl", make_poems(10))
    with pytest.raises(NeuraldaError, match="the corpus cannot change when resuming"):
        train(tiny_config(other, out, epochs=2), resume=True, **QUIET)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    # The values it was trained with, and the corpus it was trained on, may be given again.
    train(tiny_config(corpus_file, out, epochs=2, lr=0.003, keep_case=False, arch="lstm", seed=0), resume=True, **QUIET)
    assert [r["epoch"] for r in metrics(out)] == [1, 2]


def test_resume_keeps_the_recorded_device_unless_given(tmp_path, corpus_file):
    from neuralda.cli import main

    out = str(tmp_path / "run")
    tiny = ["--hidden", "32", "--layers", "1", "--batch-size", "8", "--seq-len", "16", "-q"]
    device = lambda: json.loads((tmp_path / "run" / "config.json").read_text())["device"]  # noqa: E731
    assert main(["train", str(corpus_file), "-o", out, "--epochs", "1", *tiny]) == 0
    assert device() == "auto"
    assert main(["train", "-o", out, "--resume", "--epochs", "2", "--device", "cpu", "-q"]) == 0
    assert device() == "cpu"
    assert main(["train", str(corpus_file), "-o", out, "--resume", "--epochs", "3", *tiny]) == 0
    assert device() == "cpu" and [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2, 3]


def test_a_plain_resume_keeps_the_recorded_time_budget(tmp_path, corpus_file):
    out = tmp_path / "run"
    assert train(tiny_config(corpus_file, out, epochs=60, max_time=0.5), **QUIET).stopped == "time"
    resumed = train(tiny_config("", out, epochs=60), resume=True, **QUIET)
    assert resumed.stopped == "time" and resumed.epochs < 60
    assert Run.open(out).config["max_time"] == 0.5
    train(tiny_config("", out, epochs=60, max_time=0.4), resume=True, **QUIET)  # a new budget replaces the old
    assert Run.open(out).config["max_time"] == 0.4


def test_any_seed_trains(tmp_path, corpus_file):
    """Seeds derived from a large --seed went past torch's 64 bits (a traceback mid-run)."""
    for seed in (1_700_000_000_000_000_000, -(2**70)):
        out = tmp_path / str(seed)
        cfg = tiny_config(corpus_file, out, arch="seed", epochs=1, unk_rate=0.5, seed=seed)  # shuffled windows
        assert train(cfg, **QUIET).epochs == 1
    from neuralda.train import torch_seed

    for seed in (0, 12345, -1, 2**64 - 1):  # the seeds torch took draw as before
        want = torch.rand(3, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(torch.rand(3, generator=torch.Generator().manual_seed(torch_seed(seed))), want)


def test_metrics_show_the_rate_each_epoch_trained_at(tmp_path, corpus_file, monkeypatch):
    import neuralda.train as training

    losses = iter([5.0, 6.0, 4.0])  # held-out losses scripted: a trajectory's rounding differs from CPU to CPU
    monkeypatch.setattr(training, "HeldoutScorer", lambda *args, **options: lambda: (next(losses), 1))
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=3, lr=0.5, patience=0), **QUIET)
    rows = metrics(out)
    # Epoch 2 validated worse and halved the rate: for epoch 3, not for itself.
    assert [r["best"] for r in rows] == [True, False, True]
    assert [r["lr"] for r in rows] == [0.5, 0.5, 0.25]


@pytest.mark.parametrize("resume", [False, True])
def test_train_does_not_write_into_a_directory_of_other_files(tmp_path, corpus_file, resume):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.jsonl").write_text('{"text": "my own"}\n')
    (project / "notes.txt").write_text("mine\n")
    with pytest.raises(NeuraldaError, match=r"holds files that are not a run's \(notes.txt\)"):
        train(tiny_config(corpus_file, project, epochs=1), resume=resume, **QUIET)
    (project / "notes.txt").unlink()
    if not resume:  # only its own data/train.jsonl: it may be the user's, so --resume must say it is a killed run's
        with pytest.raises(NeuraldaError, match="not empty and holds no run"):
            train(tiny_config(corpus_file, project, epochs=1), **QUIET)
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == ["data", "data/train.jsonl"]
    assert (project / "data" / "train.jsonl").read_text() == '{"text": "my own"}\n'
    (tmp_path / "empty").mkdir()
    assert train(tiny_config(corpus_file, tmp_path / "empty", epochs=1), **QUIET).epochs == 1


def test_an_existing_run_is_not_overwritten(tmp_path, corpus_file):
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    with pytest.raises(NeuraldaError, match="--resume"):
        train(tiny_config(corpus_file, out, epochs=1), **QUIET)


def test_patience_stops_early(tmp_path, corpus_file):
    result = train(tiny_config(corpus_file, tmp_path / "run", epochs=50, patience=1, lr=0.5), **QUIET)
    assert result.stopped == "patience" and result.epochs < 50


def test_gains_too_small_to_keep_the_rate_count_towards_patience(tmp_path, corpus_file, monkeypatch):
    import neuralda.train as training

    losses = iter([5.0, 4.0, 3.99999, 3.99998, 3.99997, 3.99996, 3.99995])  # per token, after each epoch

    def scripted(model, ids, *args, **options):
        return lambda: (next(losses) * (ids.numel() - 1), ids.numel() - 1)

    monkeypatch.setattr(training, "HeldoutScorer", scripted)
    cfg = tiny_config(corpus_file, tmp_path / "run", epochs=7, patience=2, lr=0.01)  # lstm: plateau schedule
    result = train(cfg, **QUIET)
    # Epochs 3 and 4 gain 0.00025% each: the schedule halves the rate after each, and patience stops the run there.
    assert (result.stopped, result.epochs, result.best_epoch) == ("patience", 4, 4)
    assert [r["lr"] for r in metrics(tmp_path / "run")] == [0.01, 0.01, 0.01, 0.005]


def test_a_resume_keeps_counting_towards_patience(tmp_path, corpus_file, monkeypatch):
    """The same scripted losses, the run stopped after epoch 3 (one epoch without a real gain) and resumed: it stops
    where the run in one go did, not two more epochs after the resume."""
    import neuralda.train as training

    def scripted(*losses):
        left = iter(losses)
        return lambda model, ids, *args, **options: lambda: (next(left) * (ids.numel() - 1), ids.numel() - 1)

    out = tmp_path / "run"
    monkeypatch.setattr(training, "HeldoutScorer", scripted(5.0, 4.0, 3.99999))
    train(tiny_config(corpus_file, out, epochs=3, patience=2, lr=0.01), **QUIET)
    monkeypatch.setattr(training, "HeldoutScorer", scripted(3.99998, 3.99997, 3.99996, 3.99995))
    result = train(tiny_config("", out, epochs=7), resume=True, **QUIET)
    assert (result.stopped, result.epochs, result.best_epoch) == ("patience", 4, 4)
    assert [r["lr"] for r in metrics(out)] == [0.01, 0.01, 0.01, 0.005]


def train_until_ctrl_c(cfg, epoch: int, monkeypatch, log=lambda s: None) -> None:
    """Train ``cfg`` until Ctrl-C while ``epoch`` validates (its weights trained, not yet held as the best)."""
    import neuralda.train as training

    calls = []

    class Interrupted(training.HeldoutScorer):
        def __call__(self) -> tuple[float, int]:
            calls.append(1)
            if len(calls) == epoch:
                raise KeyboardInterrupt
            return super().__call__()

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(training, "HeldoutScorer", Interrupted)
        train(cfg, log=log)


class FakeLibc:
    """The C library as `train` sees it, its malloc calls recorded."""

    def __init__(self, glibc: bool) -> None:
        self.calls: list[tuple] = []
        if glibc:
            self.gnu_get_libc_version = lambda: b"2.36"

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.mark.parametrize("interrupted", [False, True])
@pytest.mark.parametrize("glibc", [True, False])
def test_training_on_a_cpu_keeps_freed_memory_for_its_steps_and_gives_it_back(
    tmp_path, corpus_file, monkeypatch, interrupted, glibc
):
    """glibc hands each large buffer back to the system when it is freed, so each step would fault its pages in
    afresh: while training on a CPU, glibc keeps them (no mmap, no trim); after, also after Ctrl-C, its thresholds
    are back and the memory kept is returned. Another C library is left as it is."""
    import types

    import neuralda.train as training

    libc, during = FakeLibc(glibc), []
    monkeypatch.setattr(training, "ctypes", types.SimpleNamespace(CDLL=lambda name: libc))
    epoch = training.Trainer._train_epoch
    recorded = lambda self, *a: during.append(list(libc.calls)) or epoch(self, *a)  # noqa: E731
    monkeypatch.setattr(training.Trainer, "_train_epoch", recorded)
    cfg = tiny_config(corpus_file, tmp_path / "run", epochs=3)
    if interrupted:
        train_until_ctrl_c(cfg, 2, monkeypatch)
    else:
        train(cfg, **QUIET)
    if not glibc:
        assert libc.calls == [] and len(during) == (2 if interrupted else 3)
        return
    keep = [("mallopt", training.M_MMAP_MAX, 0), ("mallopt", training.M_TRIM_THRESHOLD, 2**31 - 1)]
    assert during == [keep] * (2 if interrupted else 3)
    assert libc.calls[:2] == keep and libc.calls[-1] == ("malloc_trim", 0)
    assert ("mallopt", training.M_MMAP_MAX, 65536) in libc.calls[2:]


def test_ctrl_c_keeps_the_best_weights_of_the_epochs_it_finished(tmp_path, corpus_file, monkeypatch):
    lines = []
    train_until_ctrl_c(tiny_config(corpus_file, tmp_path / "run", epochs=5), 3, monkeypatch, lines.append)
    run = Run.open(tmp_path / "run")
    assert run.checkpoint_meta("last")["epoch"] == 0  # checkpoints every 30 s: not yet
    assert run.checkpoint_meta("best")["epoch"] in (1, 2)  # the model that `generate` writes with
    assert "best weights so far" in lines[-1]
    assert train(tiny_config(corpus_file, tmp_path / "run", epochs=5), resume=True, **QUIET).epochs == 5


def test_a_resume_that_stops_before_the_interrupted_best_keeps_a_best_of_its_own(tmp_path, corpus_file, monkeypatch):
    """Ctrl-C writes the best weights held in memory, from epochs after 'last'; a resume that stops before them
    (fewer --epochs, a shorter --patience) must not be left with a 'best' from epochs its metrics do not have."""
    out = tmp_path / "run"
    train_until_ctrl_c(tiny_config(corpus_file, out, epochs=8, save_at=(2,)), 5, monkeypatch)
    run = Run.open(out)
    assert run.checkpoint_meta("last")["epoch"] == 2 and run.checkpoint_meta("best")["epoch"] in (3, 4)
    interrupted, weights = run.checkpoint_meta("best")["epoch"], read_checkpoint(run.checkpoint_path("best"))[0]
    said = []
    assert train(tiny_config("", out, epochs=2), resume=True, log=said.append).epochs == 2  # nothing left to train
    best = [r["epoch"] for r in run.metrics() if r["best"]][-1]
    assert run.checkpoint_meta("best")["epoch"] == best <= 2
    # ... and the weights Ctrl-C wrote are not lost: they are their epoch's checkpoint.
    kept = read_checkpoint(run.checkpoint_path(f"epoch-{interrupted}"))[0]
    assert kept.keys() == weights.keys() and all(torch.equal(weights[k], v) for k, v in kept.items())
    assert f"the interrupted run's best weights, of epoch {interrupted}, are kept as checkpoint" in said[0]


def test_a_run_killed_between_its_best_and_last_checkpoints_resumes_with_a_best_of_its_own(
    tmp_path, corpus_file, monkeypatch
):
    """A checkpoint writes 'best', then 'last': a run killed (or out of disk) in between has a 'best' newer than its
    'last'; a resume that stops before that epoch must not keep it, as after Ctrl-C."""
    import neuralda.train as training

    out, save = tmp_path / "run", training.Trainer._save

    def killed_while_saving_last(self, name, with_optimizer=False):
        if name == "last" and self.state["epoch"] == 4:  # a new best (epoch 3 is not one)
            raise SystemExit(137)
        save(self, name, with_optimizer)

    with monkeypatch.context() as m, pytest.raises(SystemExit):
        m.setattr(training.Trainer, "_save", killed_while_saving_last)
        train(tiny_config(corpus_file, out, epochs=5, save_every=0), **QUIET)
    run = Run.open(out)
    assert run.checkpoint_meta("last")["epoch"] == 3
    assert run.checkpoint_meta("best")["epoch"] == 4  # what `generate` writes with meanwhile
    assert train(tiny_config("", out, epochs=3), resume=True, **QUIET).epochs == 3  # nothing left to train
    best = [r["epoch"] for r in run.metrics() if r["best"]][-1]
    assert run.checkpoint_meta("best")["epoch"] == best <= 3


def test_max_time_stops_cleanly(tmp_path, corpus_file):
    result = train(tiny_config(corpus_file, tmp_path / "run", epochs=10_000, max_time=1.5), **QUIET)
    assert result.stopped == "time"
    assert Run.open(tmp_path / "run").checkpoints()[:2] == ["best", "last"]


@pytest.mark.parametrize("epochs", [3, 1])
def test_max_time_ends_an_epoch_longer_than_the_budget(tmp_path, corpus_file, epochs):
    """A corpus whose first epoch outlasts --max-time (ten times ours took 9 minutes an epoch) stops at the budget
    with a model: the epoch is cut there, validated and saved. The last epoch cut too stops for "time" (it said
    "epochs")."""
    out = tmp_path / "run"
    cfg = tiny_config(corpus_file, out, epochs=epochs, batch_size=1, seq_len=2, hidden=256, max_time=0.5)
    started = time.monotonic()
    result = train(cfg, **QUIET)
    assert result.stopped == "time" and result.epochs == 1 and time.monotonic() - started < 20
    [row] = metrics(out)
    assert 0 < result.tokens_trained < Run.open(out).config["train_tokens"] and row["val_ppl"] > 0
    assert row["cut"] and 0 < row["step"] < result.tokens_trained  # batches of one row: the batches done
    assert Run.open(out).checkpoint_meta("best")["epoch"] == 1


def test_no_validation_split(tmp_path, corpus_file):
    result = train(tiny_config(corpus_file, tmp_path / "run", epochs=1, val_fraction=0.0), **QUIET)
    assert result.best_val_ppl is None
    assert metrics(tmp_path / "run")[0]["val_ppl"] is None


def test_seed_recipe_trains_on_shuffled_windows(tmp_path, corpus_file):
    out = tmp_path / "seed"
    train(tiny_config(corpus_file, out, arch="seed", epochs=1, hidden=16, layers=2), **QUIET)
    config = Run.open(out).config
    assert config["stateful"] is False and config["lr"] == 1e-3 and config["patience"] == 0


def test_stateful_batches_are_parallel_streams():
    ids = torch.arange(41)
    cfg = {"batch_size": 4, "seq_len": 3, "stateful": True, "carry_state": True, "seed": 0}
    got = list(batches(ids, cfg, 1))
    x0, y0, reset0, _ = got[0]
    assert reset0 and x0.tolist() == [[0, 1, 2], [10, 11, 12], [20, 21, 22], [30, 31, 32]]
    assert torch.equal(y0, x0 + 1)
    x1, _, reset1, _ = got[1]
    assert not reset1 and x1[:, 0].tolist() == [3, 13, 23, 33]
    # got-book-6's code read its streams so, but every batch from zeros (its dynamic_rnn never read the fed state)
    uncarried = list(batches(ids, {**cfg, "carry_state": False}, 1))
    assert all(reset for *_, reset, _ in uncarried)
    assert [x.tolist() for x, *_ in uncarried] == [x.tolist() for x, *_ in got]


def test_no_carry_state_is_recorded_and_refused_where_there_is_no_state_to_carry(tmp_path, corpus_file):
    train(tiny_config(corpus_file, tmp_path / "t", arch="thoutt", epochs=1, carry_state=False), **QUIET)
    assert Run.open(tmp_path / "t").config["carry_state"] is False
    with pytest.raises(NeuraldaError, match="--no-carry-state: seed reads shuffled windows"):
        train(tiny_config(corpus_file, tmp_path / "s", arch="seed", epochs=1, carry_state=False), **QUIET)
    assert not (tmp_path / "s" / "config.json").exists()


def test_a_run_made_before_carry_state_resumes_carrying_it(tmp_path, corpus_file):
    out = tmp_path / "old"
    train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    config = json.loads((out / "config.json").read_text())
    del config["carry_state"], config["epsilon_hat"]  # nor epsilon_hat: it trained with torch's Adam epsilon
    (out / "config.json").write_text(json.dumps(config))
    assert train(tiny_config("", out, epochs=2, carry_state=True), resume=True, **QUIET).epochs == 2  # as it did
    assert Run.open(out).config["carry_state"] is True and Run.open(out).config["epsilon_hat"] is None


def test_keeping_the_older_best_aside_leaves_a_best_in_place(tmp_path):
    """A second Ctrl-C while the newer best is written must not leave the run without any 'best'."""
    from neuralda.files import atomic_write
    from neuralda.train import BEST_AT_LAST, _keep_best_aside, _restore_best

    (tmp_path / "best.safetensors").write_bytes(b"older best")
    _keep_best_aside(tmp_path)
    assert (tmp_path / "best.safetensors").read_bytes() == (tmp_path / BEST_AT_LAST).read_bytes() == b"older best"
    atomic_write(tmp_path / "best.safetensors", b"newer best")  # as checkpoints are written: a new file
    _restore_best(tmp_path, last_epoch=0)  # a 'best' whose epoch cannot be read is not kept over the older one
    assert (tmp_path / "best.safetensors").read_bytes() == b"older best" and not (tmp_path / BEST_AT_LAST).exists()
    _keep_best_aside(tmp_path)
    (tmp_path / "best.safetensors").unlink()  # nor is a missing one
    _restore_best(tmp_path, last_epoch=0)
    assert (tmp_path / "best.safetensors").read_bytes() == b"older best" and not (tmp_path / BEST_AT_LAST).exists()


def test_window_batches_cover_each_window_once():
    ids = torch.arange(31)
    cfg = {"batch_size": 4, "seq_len": 3, "stateful": False, "seed": 0}
    firsts = sorted(int(v) for x, *_ in batches(ids, cfg, 1) for v in x[:, 0])
    assert firsts == list(range(0, 30, 3))


def test_process_slices_weigh_their_share_of_the_batch():
    """Each process's weight makes DDP's average over processes the mean over the whole batch, however unevenly
    the rows split; a process left without rows reads one with weight 0."""
    ids = torch.arange(31)  # 10 windows of 3: batches of 4, 4 and 2 rows
    cfg = {"batch_size": 4, "seq_len": 3, "stateful": False, "seed": 0}
    steps = list(zip(*(batches(ids, cfg, 1, rank, 3) for rank in range(3))))
    assert [[len(x) for x, _, _, w in step if w] for step in steps] == [[2, 1, 1], [2, 1, 1], [1, 1]]
    for step in steps:
        assert sum(w * y.numel() for _, y, _, w in step) / 3 == pytest.approx(1.0)
    x, y, _, w = steps[-1][2]
    assert w == 0 and len(x) == len(y) == 1


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("45", 45), ("1.5m", 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "-5", "0", "5d", "inf", "1e999m", "nan"])
def test_parse_duration_errors(text):
    with pytest.raises(NeuraldaError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "0m", "0.0", "00"])
def test_a_duration_that_may_be_0_takes_any_spelling_of_it(text):
    assert parse_duration(text, zero=True) == 0
    with pytest.raises(NeuraldaError, match="above 0"):
        parse_duration(text)
    with pytest.raises(NeuraldaError, match="0 or more"):
        parse_duration("-1" + text, zero=True)


def test_damaged_checkpoint_is_a_clear_error(tmp_path, corpus_file):
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    best = out / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(NeuraldaError, match="damaged checkpoint"):
        Run.open(out).load_model("best")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block_rows", [30, 12])
def test_chunked_loss_equals_cross_entropy_and_its_gradients(monkeypatch, bias, block_rows):
    import neuralda.evaluate
    import neuralda.train as t

    monkeypatch.setattr(neuralda.evaluate, "CPU_LOSS_CHUNK", 7 * 50)  # chunks of 7 rows of 50 words, the last short
    monkeypatch.setattr(t, "CPU_LOSS_BLOCK", block_rows * 50)  # one block of all 30 rows, or three of 10
    torch.manual_seed(0)
    h = torch.randn(30, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True) if bias else None
    y = torch.randint(0, 50, (30,))
    ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w, b), y)
    ref_grads = torch.autograd.grad(ref * 3, [h, w] + ([b] if bias else []))
    got = t._LinearCrossEntropy.apply(h, w, b, y, torch.float32, 1 / len(y))
    got_grads = torch.autograd.grad(got * 3, [h, w] + ([b] if bias else []))
    assert torch.allclose(got, ref, atol=1e-5)
    for g, r in zip(got_grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)


def test_unk_rate_reads_words_seen_once_as_unknown(tmp_path):
    from neuralda.train import Trainer

    rare = [{"text": f"the {w} and the {w}2 of love"} for w in ("quartz", "ember", "willow", "saffron", "tide")] * 1
    corpus = write_jsonl(tmp_path / "c.jsonl", make_poems(30) + rare)
    cfg = tiny_config(corpus, tmp_path / "run", unk_rate=0.5, val_fraction=0.0)
    trainer = Trainer(cfg, resume=False, log=lambda s: None)
    ids = trainer.train_ids
    once = trainer.rare
    first, again, other = trainer._epoch_ids(1), trainer._epoch_ids(1), trainer._epoch_ids(2)
    changed = first != ids
    assert torch.equal(first, again) and not torch.equal(first, other)  # the same for an epoch, resumed or not
    assert bool((changed <= once).all())  # only words seen once
    assert 0 < int(changed.sum()) < int(once.sum())
    assert bool((first[changed] == trainer.run.vocab.unk).all())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_logged_held_out_perplexity_is_the_one_evaluate_measures(tmp_path, corpus_file, precision):
    """A CPU training in bf16 scores its held-out poems in bf16 (float32 products are the slow ones there), and
    `evaluate` scores a checkpoint as its run did: the plot and the report's table give one number."""
    from neuralda.evaluate import evaluate_run, token_nll

    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=2, precision=precision), **QUIET)
    run = Run.open(out)
    assert {r["precision"] for r in run.metrics()} == {precision}
    logged = run.checkpoint_meta("best")["val_loss"]  # unrounded
    row = evaluate_run(out, "best", samples=0)
    assert row["precision"] == precision
    assert math.log(row["perplexity"]) == pytest.approx(logged, rel=1e-9)
    model, _ = run.load_model("best")
    nll, count = token_nll(model, _stream(run, "val"), precision)
    assert nll / count == pytest.approx(logged, rel=1e-9)
    if precision == "bf16":  # not float32's number: the test would pass on a run that scored in float32 otherwise
        nll, count = token_nll(model, _stream(run, "val"))
        assert nll / count != pytest.approx(logged, rel=1e-6)


def test_a_min_count_that_leaves_no_word_is_an_error(tmp_path, corpus_file):
    with pytest.raises(NeuraldaError, match="--min-count 100000 leaves no word"):
        train(tiny_config(corpus_file, tmp_path / "run", min_count=100_000), **QUIET)
    assert not (tmp_path / "run").exists()


def test_the_precision_can_change_on_resume(tmp_path, corpus_file):
    """A run trained in bf16 on a CPU resumes in float32 (on a GPU an LSTM must): checkpoints are float32 either way."""
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1, precision="bf16"), **QUIET)
    train(tiny_config("", out, epochs=2, precision="fp32"), resume=True, **QUIET)
    assert [r["precision"] for r in metrics(out)] == ["bf16", "fp32"]


def test_bf16_on_a_gpu_is_for_the_transformer_only():
    """Autocast casts a cuDNN LSTM to float16 whatever dtype it is given: asking for bf16 there is refused, not run
    in float16 without loss scaling."""
    from neuralda.train import pick_precision

    for arch in ("lstm", "seed", "thoutt"):
        with pytest.raises(NeuraldaError, match="float16"):
            pick_precision("bf16", "cuda:1", arch)
        assert pick_precision("auto", "cuda", arch) == pick_precision("fp32", "cuda", arch) == "fp32"
        assert pick_precision("bf16", "cpu", arch) == "bf16"
    assert pick_precision("bf16", "cuda", "gpt") == "bf16"


@pytest.mark.parametrize("device", ["cuda:1", "cuda:x", "cuda:-1", "cuda:", "cuda:00"])
def test_a_gpu_this_machine_lacks_is_a_one_line_error(tiny_run, monkeypatch, capsys, device):
    """On a machine with one GPU, --device cuda:1 (or a misspelt index) is bad input, not torch's RuntimeError at the
    model's first move (a traceback)."""
    from neuralda.cli import main
    from neuralda.train import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == "cuda:0"
    assert main(["generate", str(tiny_run), "--device", device, "--n", "1", "--words", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--device {device}: this machine's CUDA GPUs are cuda:0 to cuda:0" in err


@pytest.mark.parametrize("resume", [False, True])
def test_a_refused_precision_writes_nothing(tmp_path, corpus_file, monkeypatch, resume):
    """bf16 for an LSTM on a GPU is refused before config.json changes: saved, it refused every resume after."""
    out = tmp_path / "run"
    if resume:
        train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(NeuraldaError, match="^precision bf16 on CUDA"):
        train(tiny_config("" if resume else corpus_file, out, epochs=2, device="cuda", precision="bf16"),
              resume=resume, **QUIET)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp32"), ((7, 0), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_the_transformer_takes_bf16_on_gpus_with_bf16_units_only(monkeypatch, capability, expected):
    """A T4 or a V100 only emulates bfloat16 (torch.cuda.is_bf16_supported() says yes there unless asked without
    emulation): auto keeps float32 on them, as it does on CPUs without bf16 units."""
    from neuralda.train import pick_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
                        or capability >= (8, 0))
    assert pick_precision("auto", "cuda", "gpt") == pick_precision("auto", "cuda:1", "gpt") == expected
    assert pick_precision("bf16", "cuda", "gpt") == "bf16"  # by name: what was asked


def test_a_big_corpus_is_counted_into_its_vocabulary_without_holding_each_of_its_tokens(tmp_path):
    """The vocabulary and the run's size come from counting each training poem's tokens as it is read: a list of
    every token took ~90 bytes a token (450 MB at five million, more than the corpus and its split together)."""
    import tracemalloc

    from neuralda.corpus import read_corpus
    from neuralda.tokenizer import POEM_END, tokenize
    from neuralda.train import TrainConfig, _prepare

    line = "the sea, the salt and the moon over the water"
    texts = ["\n".join([line] * 10) + f" {i}" for i in range(1000)]
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    read_corpus(corpus)  # the modules it imports are not the corpus's memory
    tracemalloc.start()  # Python's own allocations: the poems and their split are ~15 bytes a token
    try:
        run = _prepare(TrainConfig(corpus=str(corpus), output=str(tmp_path / "run"), val_fraction=0.0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    tokens = sum(len(tokenize(t)) for t in texts)
    assert peak < 30 * tokens, f"{peak / tokens:.0f} bytes a token"
    assert run.config["train_tokens"] == tokens
    assert run.vocab.itos[3:6] == [POEM_END, "the", ","]  # most frequent first, ties in order


def test_the_ends_of_each_setting_s_range_train(tmp_path, corpus_file):
    """--unk-rate 1 (every word seen once read as <unk>) and --dropout 0 lie inside their ranges."""
    cfg = tiny_config(corpus_file, tmp_path / "run", epochs=1, unk_rate=1.0, dropout=0.0)
    assert train(cfg, **QUIET).epochs == 1


def test_a_resume_may_change_the_settings_that_do_not_change_the_model(tmp_path, corpus_file):
    """--patience and --save-every given to a resume are taken and recorded (as --device, --epochs, --max-time are)."""
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    train(tiny_config("", out, epochs=2, patience=7, save_every=0.0), resume=True, **QUIET)
    config = Run.open(out).config
    assert (config["patience"], config["save_every"]) == (7, 0.0) and [r["epoch"] for r in metrics(out)] == [1, 2]


def test_auto_takes_a_gpu_when_there_is_one(monkeypatch):
    from neuralda.train import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") in ("cpu", "mps")


def test_a_gpu_on_a_machine_without_one_is_a_one_line_error(tiny_run, monkeypatch, capsys):
    from neuralda.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", str(tiny_run), "--device", "cuda", "--n", "1", "--words", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: no CUDA GPU is available here" in err


@pytest.mark.parametrize("bf16_units, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_a_cpu_takes_bf16_where_it_has_bf16_units(monkeypatch, bf16_units, expected):
    from neuralda.train import pick_precision

    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16_units)
    for arch in ("lstm", "seed", "gpt"):
        assert pick_precision("auto", "cpu", arch) == expected
    assert pick_precision("fp32", "cpu") == "fp32"


@pytest.mark.parametrize("arch", ["lstm", "seed"])
def test_a_corpus_shorter_than_one_batch_trains(tmp_path, arch):
    """Fewer tokens than --batch-size streams (or one --seq-len window): the epoch reads what there is."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "the sea returns\nand the salt wind sings"}])
    cfg = tiny_config(corpus, tmp_path / "run", arch=arch, epochs=2, batch_size=64, seq_len=32, val_fraction=0.0)
    result = train(cfg, **QUIET)
    assert result.tokens_trained == 2 * Run.open(tmp_path / "run").config["train_tokens"]
    assert metrics(tmp_path / "run")[-1]["train_loss"] < metrics(tmp_path / "run")[0]["train_loss"]


def test_weight_decay_shrinks_the_weights_trained(tmp_path, corpus_file):
    """--weight-decay is applied, not only recorded: the same run with a large one ends with smaller weights."""
    norms = []
    for decay in (0.0, 10.0):
        out = tmp_path / str(decay)
        train(tiny_config(corpus_file, out, epochs=1, weight_decay=decay, lr=0.01, dropout=0.0), **QUIET)
        tensors, _ = read_checkpoint(out / "checkpoints" / "last.safetensors")
        norms.append(sum(float(v.norm()) for k, v in tensors.items() if not k.startswith("optim/")))
    assert norms[1] < 0.9 * norms[0]


def test_windows_are_shuffled_anew_each_epoch_and_by_seed():
    """As Keras' fit(shuffle=True): each epoch its own order, the same again for the same --seed and epoch."""
    ids = torch.arange(301)
    cfg = {"batch_size": 4, "seq_len": 3, "stateful": False, "seed": 0}
    order = lambda seed, epoch: [x[:, 0].tolist() for x, *_ in batches(ids, {**cfg, "seed": seed}, epoch)]  # noqa: E731
    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)


@pytest.mark.parametrize("stateful", [True, False])
@pytest.mark.parametrize("n_ids, size, length", [(41, 4, 3), (31, 4, 3), (100, 7, 5), (10, 64, 32), (2, 8, 4)])
def test_the_progress_bar_counts_an_epoch_s_batches(stateful, n_ids, size, length):
    from neuralda.train import batch_count

    cfg = {"batch_size": size, "seq_len": length, "stateful": stateful, "carry_state": True, "seed": 0}
    assert batch_count(n_ids, cfg) == len(list(batches(torch.arange(n_ids), cfg, 1)))


def test_the_thoutt_recipe_clips_each_gradient_element(tmp_path, corpus_file, monkeypatch):
    """got-book-6 clipped every gradient element to +-clip_value: clipped to almost nothing, Adam barely moves."""
    from dataclasses import replace

    from neuralda.models import RECIPES
    from neuralda.train import Trainer

    moved = []
    for clip in (1.0, 1e-12):
        monkeypatch.setitem(RECIPES, "thoutt", replace(RECIPES["thoutt"], clip_value=clip))
        out = tmp_path / str(clip)
        trainer = Trainer(tiny_config(corpus_file, out, arch="thoutt", epochs=1, dropout=0.0), False, lambda s: None)
        before, _ = read_checkpoint(out / "checkpoints" / "last.safetensors")  # epoch 0: the initial weights
        trainer.fit()
        after, _ = read_checkpoint(out / "checkpoints" / "last.safetensors")
        moved.append(max(float((after[k] - before[k]).abs().max()) for k in before if not k.startswith("optim/")))
    assert moved[0] > 1e-3 and moved[1] < 1e-4


@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipped, and left as they are
def test_clipping_by_norm_gives_torch_s_gradients_bit_for_bit(max_norm):
    """Training clips with its own lean clip_grad_norm (no per-step grouping: a GPU's small steps wait on the host);
    the gradients are torch's clip_grad_norm_'s exactly, so a run trains as it did with torch's."""
    from neuralda.train import clip_grad_norm

    torch.manual_seed(0)
    grads = [torch.randn(shape) for shape in ((64, 32), (32,), (5, 7, 3), (1,))]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for param, grad in zip(params, grads):
        param.grad = grad.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    clip_grad_norm(grads, max_norm)
    assert all(torch.equal(param.grad, grad) for param, grad in zip(params, grads))
    assert (max_norm < 1) == (float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))) < 1)


def test_the_seed_s_rate_stays_fixed_when_held_out_loss_stalls(tmp_path, corpus_file, monkeypatch):
    """The seed's and got-book-6's Adam ran at 1e-3 throughout: no schedule halves it (ours does, see above)."""
    import neuralda.train as training

    losses = iter([5.0, 6.0, 7.0])
    monkeypatch.setattr(training, "HeldoutScorer", lambda *args, **options: lambda: (next(losses), 1))
    train(tiny_config(corpus_file, tmp_path / "run", arch="seed", epochs=3, hidden=16), **QUIET)
    assert [r["lr"] for r in metrics(tmp_path / "run")] == [1e-3] * 3


def test_unk_rate_reads_only_words_seen_once_as_unknown(tmp_path):
    from neuralda.train import Trainer

    extra = [{"text": "the quartz of love"}, {"text": "the cobalt sea"}, {"text": "and the cobalt night"}]
    corpus = write_jsonl(tmp_path / "c.jsonl", make_poems(30) + extra)
    trainer = Trainer(tiny_config(corpus, tmp_path / "run", unk_rate=1.0, val_fraction=0.0), False, lambda s: None)
    stoi, ids = trainer.run.vocab.stoi, trainer.train_ids
    read = trainer._epoch_ids(1)
    assert bool((read[ids == stoi["quartz"]] == trainer.run.vocab.unk).all())  # seen once: always, at rate 1
    assert torch.equal(read[ids == stoi["cobalt"]], ids[ids == stoi["cobalt"]])  # seen twice: never


def test_max_time_does_not_start_an_epoch_the_budget_cannot_hold(tmp_path, corpus_file, monkeypatch):
    """Epochs of 10 s (on a clock that moves a microsecond a reading, and 10 s while validating) and --max-time 25s:
    two whole epochs, not a third cut short at the budget."""
    import types

    import neuralda.train as training

    now = [0.0]

    def validate():
        now[0] += 10.0
        return 4.0, 1

    def clock():
        now[0] += 1e-6
        return now[0]

    monkeypatch.setattr(training, "time", types.SimpleNamespace(monotonic=clock))
    monkeypatch.setattr(training, "HeldoutScorer", lambda *args, **options: validate)
    result = train(tiny_config(corpus_file, tmp_path / "run", epochs=5, max_time=25.0), **QUIET)
    assert (result.stopped, result.epochs) == ("time", 2)
    assert [r["cut"] for r in metrics(tmp_path / "run")] == [False, False]


def test_an_epoch_as_good_as_the_best_is_not_a_new_best(tmp_path, corpus_file, monkeypatch):
    import neuralda.train as training

    losses = iter([5.0, 5.0, 4.0])
    monkeypatch.setattr(training, "HeldoutScorer", lambda *args, **options: lambda: (next(losses), 1))
    result = train(tiny_config(corpus_file, tmp_path / "run", epochs=3, patience=0, save_every=0.0), **QUIET)
    assert [r["best"] for r in metrics(tmp_path / "run")] == [True, False, True] and result.best_epoch == 3


def test_an_infinite_loss_stops_the_run_as_nan_does(tmp_path, corpus_file, monkeypatch):
    """Weights trained on an infinite loss are NaN: the run stops before they are checkpointed."""
    from neuralda.train import Trainer

    real = Trainer._train_epoch

    def overflowing(self, epoch, progress):
        trained = real(self, epoch, progress)
        return trained._replace(loss=math.inf) if epoch == 2 else trained

    monkeypatch.setattr(Trainer, "_train_epoch", overflowing)
    out = tmp_path / "run"
    with pytest.raises(NeuraldaError, match="the training loss became inf in epoch 2; the checkpoints of epoch 1"):
        train(tiny_config(corpus_file, out, epochs=3, save_every=0.0), **QUIET)
    assert [r["epoch"] for r in metrics(out)] == [1] and Run.open(out).checkpoint_meta("last")["epoch"] == 1


def test_carrying_the_state_along_the_streams_trains_another_model(tmp_path, corpus_file):
    """With the state carried, each batch starts where the one before ended; --no-carry-state starts each from zeros:
    the same batches in the same order train different weights."""
    weights = []
    for carry in (True, False):
        out = tmp_path / str(carry)
        train(tiny_config(corpus_file, out, arch="thoutt", epochs=1, dropout=0.0, carry_state=carry), **QUIET)
        tensors, _ = read_checkpoint(out / "checkpoints" / "last.safetensors")
        weights.append({k: v for k, v in tensors.items() if not k.startswith("optim/")})
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


class Killed(BaseException):
    """SIGKILL, as far as the run can tell: nothing of it runs after this."""


@pytest.mark.parametrize("resumed_epochs", [2, 3])
def test_a_run_killed_right_after_a_checkpoint_resumes_with_each_epoch_and_its_best(
    tmp_path, corpus_file, monkeypatch, resumed_epochs
):
    """Killed just after checkpoint 'last' of epoch 2 was written: the resume has epoch 2's metrics once, and its
    'best' is the best epoch its metrics show."""
    import neuralda.train as training

    out = tmp_path / "run"
    losses = iter([5.0, 4.0, 3.0])  # each epoch a new best
    monkeypatch.setattr(training, "HeldoutScorer", lambda *args, **options: lambda: (next(losses), 1))
    real = training.save_checkpoint

    def killed_after_last_of_epoch_2(path, tensors, meta):
        real(path, tensors, meta)
        if path.stem == "last" and meta["epoch"] == 2:
            raise Killed

    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(training, "save_checkpoint", killed_after_last_of_epoch_2)
        train(tiny_config(corpus_file, out, epochs=3, save_every=0.0), **QUIET)
    train(tiny_config("", out, epochs=resumed_epochs), resume=True, **QUIET)
    run = Run.open(out)
    assert [r["epoch"] for r in run.metrics()] == list(range(1, resumed_epochs + 1))
    assert run.checkpoint_meta("best")["epoch"] == resumed_epochs


def test_a_last_checkpoint_without_trainer_state_is_a_one_line_error(tiny_run, tmp_path, capsys):
    """'best' copied over 'last' (both are safetensors): resuming from it is bad input, not a KeyError."""
    import shutil

    from neuralda.cli import main

    run = shutil.copytree(tiny_run, tmp_path / "run")
    shutil.copy(run / "checkpoints" / "best.safetensors", run / "checkpoints" / "last.safetensors")
    assert main(["train", "-o", str(run), "--resume", "--epochs", "5", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no trainer state; cannot resume" in err


def test_a_run_killed_while_writing_its_split_starts_again_on_resume(tmp_path, corpus_file, monkeypatch):
    """config.json is written after the split and vocabulary: a run killed before it is one that --resume with the
    corpus starts again, not a run directory that cannot be opened."""
    import neuralda.train as training

    real, out = training.atomic_write, tmp_path / "run"

    def killed_at_the_held_out_poems(path, data):
        if Path(path).name == "val.jsonl":
            raise Killed
        real(path, data)

    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(training, "atomic_write", killed_at_the_held_out_poems)
        train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    assert train(tiny_config(corpus_file, out, epochs=1), resume=True, **QUIET).epochs == 1


def test_a_compiler_failure_is_a_one_line_error_and_the_run_resumes_without_it(tmp_path, corpus_file, monkeypatch):
    """torch.compile compiles at the first step; a machine without a C++ compiler fails there (Inductor's error)."""
    from torch._inductor.exc import InductorError

    class NoCompiler(torch.nn.Module):
        def forward(self, *args):
            raise InductorError(RuntimeError("InvalidCxxCompiler: No working C++ compiler found"), None)

    monkeypatch.setattr(torch, "compile", lambda module: NoCompiler())
    out = tmp_path / "run"
    with pytest.raises(NeuraldaError, match=rf"--compile failed \(InductorError: .*No working C\+\+ compiler.*"
                                            rf"continue without it: neuralda train -o {out} --resume"):
        train(tiny_config(corpus_file, out, epochs=1, compile=True), **QUIET)
    assert train(tiny_config("", out, epochs=1), resume=True, **QUIET).epochs == 1


def test_compile_is_this_invocation_s_choice(tmp_path, corpus_file, monkeypatch):
    """A run trained with --compile and resumed without it trains uncompiled, and its config.json says so."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    out = tmp_path / "run"
    train(tiny_config(corpus_file, out, epochs=1, compile=True), **QUIET)
    assert len(compiled) == 1 and Run.open(out).config["compile"] is True
    train(tiny_config("", out, epochs=2), resume=True, **QUIET)
    assert len(compiled) == 1 and Run.open(out).config["compile"] is False


def test_a_run_is_trained_by_one_process_at_a_time(tmp_path, corpus_file):
    """A --resume started beside a running `train` of the same run wrote the same epochs again (each logged twice):
    the run directory is locked while a `train` runs, a new run's too."""
    from neuralda.files import folder_lock

    out, refused = tmp_path / "run", []

    def log(line: str) -> None:  # called while the run trains: its directory is locked
        if line.startswith("training"):
            with pytest.raises(NeuraldaError) as e, folder_lock(out):
                pass
            refused.append(str(e.value))

    train(tiny_config(corpus_file, out, epochs=1), log=log)
    assert refused == [f"{out}: another neuralda process is using this run; wait for it to end, or stop it"]
    before = (out / "metrics.jsonl").read_bytes()
    with folder_lock(out), pytest.raises(NeuraldaError, match="another neuralda process is using this run"):
        train(tiny_config("", out, epochs=2), resume=True, **QUIET)
    assert (out / "metrics.jsonl").read_bytes() == before
    train(tiny_config("", out, epochs=2), resume=True, **QUIET)  # released at the end, as after an error
    assert [r["epoch"] for r in metrics(out)] == [1, 2]


def test_a_new_run_s_folder_is_locked_before_its_corpus_is_read(tmp_path, corpus_file):
    """The lock came after the corpus was split and config.json written: a --resume started meanwhile trained the
    same run too (each logged epochs 1 and 2)."""
    from neuralda.files import folder_lock

    out = tmp_path / "run"
    out.mkdir()
    with folder_lock(out), pytest.raises(NeuraldaError, match="another neuralda process is using this run"):
        train(tiny_config(corpus_file, out, epochs=1), **QUIET)
    assert list(out.iterdir()) == []


def test_a_run_that_cannot_start_removes_only_the_folders_made_for_it(tmp_path, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text("not json\n")
    (tmp_path / "mine").mkdir()
    for output in ("missing/../mine", "new/runs/a"):  # "missing" not there: "mine" was taken for a folder made
        with pytest.raises(NeuraldaError, match="bad.jsonl"):
            train(tiny_config(tmp_path / "bad.jsonl", output, epochs=1), **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "corpus.jsonl", "mine"]
    # A link to a folder still to be made: made (it was "File exists").
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    train(tiny_config(corpus_file, "link", epochs=1), **QUIET)
    assert (tmp_path / "elsewhere" / "config.json").exists()


def _edited(meta: dict, path: str, value) -> dict:
    """``meta`` with the value at ``path`` ("trainer.best_val", "param_groups.0.lr") set to ``value`` (DROP: taken
    out)."""
    *parents, last = path.split(".")
    node = meta
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DROP:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return meta


DROP = object()  # a key taken out of the header


@pytest.mark.parametrize(
    "path, value",
    [("epoch", None), ("epoch", 2.5), ("trainer", "x"), ("trainer.epoch", "x"), ("param_groups", []),
     ("scheduler", DROP),
     # Each of these trained an epoch, then raised a TypeError (comparing the loss, stepping, scheduling).
     ("trainer.best_val", "abc"), ("trainer.plateau_val", [1]), ("param_groups.0.lr", "x"),
     ("param_groups.0.betas", [0.9]), ("scheduler.best", "x")],
    ids=["epoch-none", "epoch-float", "trainer-str", "trainer-epoch-str", "no-groups", "no-scheduler", "best-val-str",
         "plateau-list", "lr-str", "one-beta", "scheduler-best-str"],
)
def test_a_hand_edited_checkpoint_header_is_a_one_line_error_on_resume(tmp_path, tiny_run, path, value):
    """A header without its checksums is read as an older version's, which may say anything: a traceback before."""
    from safetensors.torch import save_file

    out = shutil.copytree(tiny_run, tmp_path / "run")
    last = out / "checkpoints" / "last.safetensors"
    tensors, meta = read_checkpoint(last)
    meta = _edited({k: v for k, v in meta.items() if k not in ("sha256", "meta_sha256")}, path, value)
    save_file(tensors, last, metadata={"neuralda": json.dumps(meta)})
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(NeuraldaError, match=r"last\.safetensors: damaged checkpoint \(.*\)$"):
        train(tiny_config("", out, epochs=6), resume=True, **QUIET)
    assert (out / "metrics.jsonl").read_bytes() == before


def test_training_gives_the_caller_s_random_numbers_back(tmp_path, corpus_file):
    """train() seeded torch's generator (per epoch) and left it so: a caller's draws after it followed the run's
    seed, not their own."""
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train(tiny_config(corpus_file, tmp_path / "run", epochs=1), **QUIET)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 1.5, "epochs must be a whole number, got 1.5"),  # trained 2 epochs and recorded 1.5
    ("epochs", True, "epochs must be a whole number, got True"),
    ("seed", 1.5, "seed must be a whole number, got 1.5"),  # torch's error once the run's files were written
    ("keep_case", 1, "keep_case must be true or false, got 1"),  # trained, then every resume refused
    ("save_at", (1.5,), "save_at must be a list of whole numbers, got (1.5,)"),  # saved nothing
    ("lr", "0.01", "lr must be a number, got '0.01'"),
])
def test_a_setting_of_the_wrong_type_from_python_is_one_line_and_writes_nothing(tmp_path, corpus_file, field, value,
                                                                                message):
    with pytest.raises(NeuraldaError, match=f"^{re.escape(message)}$"):
        train(tiny_config(corpus_file, tmp_path / "run", **{field: value}), **QUIET)
    assert not (tmp_path / "run").exists()


def test_numpy_numbers_and_paths_are_settings_as_python_s_own(tmp_path, corpus_file):
    """A Path as output, numpy's int64 epochs or float32 rate failed in json.dumps once the split was written."""
    from dataclasses import replace

    import numpy as np

    config = replace(tiny_config(corpus_file, tmp_path / "run", epochs=np.int64(1), lr=np.float32(0.01)),
                     output=tmp_path / "run")
    result = train(config, **QUIET)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert result.epochs == 1 and config["epochs"] == 1 and config["output"] == str(tmp_path / "run")
