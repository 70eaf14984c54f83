"""The run directory as other tools, editors and damaged disks leave it: odd files are one-line errors or are read
around, never a traceback."""

import json
import os
import shutil

import pytest
import torch

from conftest import tiny_config
from neuralda.cli import main
from neuralda.errors import NeuraldaError
from neuralda.run import Run
from neuralda.train import train


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run, to damage."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def edit_config(run, **changes) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **changes}))


def one_line_error(capsys, *args) -> str:
    assert main(list(map(str, args))) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralda: error:") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "key, value",
    [("hidden", "32"), ("hidden", -1), ("hidden", 0), ("hidden", True), ("layers", 1.5), ("layers", 0),
     ("dropout", "x"), ("dropout", 1), ("dropout", -0.1), ("arch", ["lstm"])],
)
@pytest.mark.parametrize("command", ["summary", "generate", "evaluate"])
def test_a_model_setting_of_the_wrong_type_is_a_one_line_error(run_copy, capsys, key, value, command):
    edit_config(run_copy, **{key: value})
    err = one_line_error(capsys, command, run_copy)
    assert f"{run_copy / 'config.json'}: " in err and key in err


@pytest.mark.parametrize("command", ["generate", "evaluate", "serve"])
def test_sizes_that_do_not_fit_the_weights_are_an_error_before_the_model_is_made(run_copy, capsys, monkeypatch, command):
    # A model of 4,000 x 4 took seconds and gigabytes to draw, one of 12,000 ten minutes, all to be thrown away.
    built = []
    real = Run.build_model
    monkeypatch.setattr(Run, "build_model", lambda run: built.append(torch.empty(0).device.type) or real(run))
    edit_config(run_copy, hidden=4000, layers=4)
    err = one_line_error(capsys, command, run_copy, *(["--port", 0] if command == "serve" else []))
    assert set(built) == {"meta"}  # only the meta device's model: no weights were drawn
    assert "the weights do not match the model (embedding.weight is [" in err and "by config.json" in err


@pytest.mark.parametrize(
    "key, value",
    [("lr", "0.001"), ("lr", True), ("patience", None), ("unk_rate", None), ("save_at", None), ("save_at", [2.5]),
     ("seed", "0"), ("batch_size", 2.5), ("seq_len", 1e9), ("max_time", "10m"), ("save_every", "30s"), ("device", 5),
     ("stateful", 1), ("optimizer", "sgd"), ("schedule", "cosine")],
)
def test_a_training_setting_of_the_wrong_type_is_a_one_line_error_on_resume(run_copy, capsys, key, value):
    edit_config(run_copy, **{key: value})
    err = one_line_error(capsys, "train", "-o", run_copy, "--resume", "--epochs", 5, "-q")
    assert f"{run_copy / 'config.json'}: {key} should be " in err


@pytest.mark.parametrize("version", ["1", 1.5, True, None])
def test_a_format_version_that_is_not_a_whole_number_is_not_a_run_configuration(run_copy, capsys, version):
    edit_config(run_copy, format_version=version)
    err = one_line_error(capsys, "summary", run_copy)
    assert "not a neuralda run configuration" in err and "newer" not in err


def test_epoch_rows_with_bytes_that_are_not_utf8_are_read_around(run_copy):
    rows = (run_copy / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    # A line of garbage, as a torn one is skipped; a bad byte inside a string keeps its row, with U+FFFD.
    (run_copy / "metrics.jsonl").write_bytes(rows[0] + b"\xff\xfe\n" + rows[1] + b'{"epoch": 9, "note": "caf\xe9"}\n')
    assert [r["epoch"] for r in Run.open(run_copy).metrics()] == [1, 2, 9]
    assert Run.open(run_copy).metrics()[-1]["note"] == "caf\ufffd"


@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.jsonl"])
def test_resume_reads_around_bytes_that_are_not_utf8(run_copy, name):
    with open(run_copy / name, "ab") as f:
        f.write(b"\xff\xfe\n")
    train(tiny_config("", run_copy, epochs=5), resume=True, log=lambda s: None)
    assert [r["epoch"] for r in Run.open(run_copy).metrics()] == [1, 2, 3, 4, 5]


def test_report_of_metrics_that_are_not_utf8(run_copy, tmp_path):
    (run_copy / "metrics.jsonl").write_bytes(b"\xff\xfe")
    assert main(["report", str(run_copy), "-o", str(tmp_path / "x.md"), "--samples", "0", "--words", "5"]) == 0
    assert "epoch-4" in (tmp_path / "x.md").read_text()


def test_held_out_poems_that_are_not_utf8_are_read_as_any_corpus_is(run_copy, capsys):
    val = run_copy / "data" / "val.jsonl"
    val.write_bytes(b"\xff\xfe\n")
    assert str(val) in one_line_error(capsys, "evaluate", run_copy, "--samples", 0)
    val.write_bytes(b'{"text": "love is a lamp left burning by the caf\xe9"}\n')  # cp1252, as corpora often are
    assert main(["evaluate", str(run_copy), "--samples", "0"]) == 0
    assert [p.text for p in Run.open(run_copy).poems("val")] == ["love is a lamp left burning by the café"]


def test_a_runs_poems_are_read_as_written_clean(tiny_run, corpus_file):
    """A run reads its own data/ without cleaning it again (ftfy took 2 s a read at a million tokens): what train
    wrote is what cleaning gives."""
    from neuralda.corpus import read_corpus

    run = Run.open(tiny_run)
    for split in ("train", "val"):
        assert run.poems(split) == read_corpus(run.path / "data" / f"{split}.jsonl")
    assert sorted(p.text for p in run.poems("train") + run.poems("val")) == sorted(
        p.text for p in read_corpus(corpus_file)
    )


def test_a_folder_named_like_a_checkpoint_is_not_one(run_copy, capsys):
    best = run_copy / "checkpoints" / "best.safetensors"
    best.unlink()
    best.mkdir()
    assert Run.open(run_copy).checkpoints() == ["last", "epoch-2", "epoch-4"]
    err = one_line_error(capsys, "generate", run_copy, "--words", 5)
    assert "no checkpoint 'best' (have: last, epoch-2, epoch-4)" in err


def test_a_folder_name_that_is_not_utf8_is_shown_with_a_replacement_character(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / os.fsdecode(b"r\xff"))
    assert Run.open(run).name == "r\ufffd"
    assert main(["summary", str(run)]) == 0
    assert "r\ufffd (lstm)" in capsys.readouterr().out


def test_a_changed_header_is_damage_to_every_reader(tmp_path):
    """The header's checksum is checked where only the header is read too (report, serve, resume checks)."""
    import torch

    from neuralda.errors import NeuraldaError
    from neuralda.run import checkpoint_meta, read_checkpoint, save_checkpoint

    path = tmp_path / "checkpoints" / "last.safetensors"
    save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 2, "arch": "lstm"})
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'\\"epoch\\": 2', b'\\"epoch\\": 3', 1))
    assert path.read_bytes() != raw
    for read in (checkpoint_meta, read_checkpoint):
        with pytest.raises(NeuraldaError, match="header does not match"):
            read(path)


def test_a_checkpoint_is_streamed_to_its_file_not_held_as_bytes(tmp_path):
    """Saving a checkpoint holds no copy of its bytes beside the tensors (safetensors' save held them twice: 3 GB
    beside the seed's model and its optimizer at 120,000 words), and the file is the one safetensors' save makes,
    byte for byte."""
    import tracemalloc

    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    from neuralda.run import read_checkpoint, save_checkpoint

    tensors = {"w": torch.randn(2_000_000, generator=torch.Generator().manual_seed(0)), "step": torch.tensor(3.0)}
    path = tmp_path / "checkpoints" / "last.safetensors"
    tracemalloc.start()  # Python's bytes are traced; torch's own tensors are not
    try:
        save_checkpoint(path, tensors, {"epoch": 2, "arch": "lstm"})
        saving = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert saving < 1_000_000, saving  # the file is 8 MB
    read, meta = read_checkpoint(path)
    assert torch.equal(read["w"], tensors["w"]) and meta["epoch"] == 2
    with safe_open(path, "pt") as f:
        header = f.metadata()
    assert path.read_bytes() == save(tensors, metadata=header)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_checkpoint_in_a_folder_whose_name_is_not_utf8_is_written_and_read(tmp_path):
    """safetensors opens UTF-8 paths only; a folder name with another byte (kept by Python as a lone surrogate)
    still holds checkpoints."""
    import torch

    from neuralda.run import read_checkpoint, save_checkpoint

    path = tmp_path / "r\udcff" / "checkpoints" / "best.safetensors"
    save_checkpoint(path, {"w": torch.arange(4.0)}, {"epoch": 1})
    tensors, meta = read_checkpoint(path)
    assert torch.equal(tensors["w"], torch.arange(4.0)) and meta["epoch"] == 1


def test_checkpoints_are_listed_in_epoch_order(run_copy):
    """epoch-10 comes after epoch-4 (report and serve show a run's epochs in this order), not between best and it."""
    shutil.copy(run_copy / "checkpoints" / "epoch-4.safetensors", run_copy / "checkpoints" / "epoch-10.safetensors")
    assert Run.open(run_copy).checkpoints() == ["best", "last", "epoch-2", "epoch-4", "epoch-10"]


def test_epoch_rows_that_are_not_records_of_an_epoch_are_read_around(run_copy):
    """JSON lines that are not an object with a whole-number epoch (an edit, another tool's) are skipped like a torn
    line: by every reader, and by a resume that cuts the file back to its checkpoint."""
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('[4]\n"epoch"\n{"epoch": "5"}\n{"epoch": 6.0}\n{"epoch": null}\n')
    assert [r["epoch"] for r in Run.open(run_copy).metrics()] == [1, 2, 3, 4]
    train(tiny_config("", run_copy, epochs=5), resume=True, log=lambda s: None)
    assert [r["epoch"] for r in Run.open(run_copy).metrics()] == [1, 2, 3, 4, 5]


def test_a_run_opened_as_dot_is_named_after_its_folder(run_copy, monkeypatch):
    monkeypatch.chdir(run_copy)
    assert Run.open(".").name == run_copy.name


@pytest.mark.parametrize(
    "content, message",
    [("[]", "not a neuralda run configuration"), ('"run"', "not a neuralda run configuration"),
     ('{"arch": "lstm",', "not valid JSON"), ("", "not valid JSON")],
)
def test_a_config_json_that_is_not_an_object_is_a_one_line_error(run_copy, capsys, content, message):
    (run_copy / "config.json").write_text(content)
    assert f"{run_copy / 'config.json'}: {message}" in one_line_error(capsys, "summary", run_copy)


def test_weights_of_another_size_of_model_are_a_one_line_error(run_copy, capsys):
    """A checkpoint copied in from a run with more layers holds weights this run's model lacks: refused, not loaded
    in part."""
    import torch

    from neuralda.models import build_model
    from neuralda.run import model_tensors, read_checkpoint, save_checkpoint

    best = run_copy / "checkpoints" / "best.safetensors"
    _, meta = read_checkpoint(best)
    config = Run.open(run_copy).config
    with torch.random.fork_rng():
        deeper = build_model(config["arch"], len(Run.open(run_copy).vocab), config["hidden"], 2, config["dropout"])
    save_checkpoint(best, model_tensors(deeper), meta)
    assert "the weights do not match the model" in one_line_error(capsys, "generate", run_copy, "--words", 5)


def test_the_language_of_a_run_is_that_of_over_half_its_poems(run_copy):
    def tags(*langs):
        write = [{"text": f"poem {i}", "lang": lang} for i, lang in enumerate(langs)]
        (run_copy / "data" / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in write))
        return Run.open(run_copy).lang

    assert tags("es", "es", "en") == "es"
    assert tags("es", "en") is None and tags("es", "es", "en", "en") is None  # no one language


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr", -1, "lr must be a number above 0, at most 1e+06, got -1"),
        ("batch_size", 0, "batch_size must be at least 1, got 0"),
        ("patience", -2, "patience must be 0 (no early stop) or more"),
        ("unk_rate", 1.5, "unk_rate must be in [0, 1]"),
        ("weight_decay", -0.5, "weight_decay must be a number from 0 to 1e+06"),
        ("max_time", -5, "max_time must be 0 or more seconds, got -5"),  # it stopped the run after one batch
        ("save_every", -3, "save_every must be 0 or more seconds"),
        ("clip_norm", -0.5, "clip_norm must be a number from 0 (no clipping) to 1e+06"),  # it trained uphill
        ("clip_value", -1, "clip_value must be a number from 0 (no clipping) to 1e+06"),
        ("clip_value", 1e39, "clip_value must be a number from 0 (no clipping) to 1e+06"),  # clipping overflowed
    ],
)
def test_a_training_setting_out_of_range_is_a_one_line_error_naming_the_file(run_copy, capsys, key, value, message):
    """A value the user never gave as a flag is named as the config.json key it came from, before anything trains."""
    edit_config(run_copy, **{key: value})
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    err = one_line_error(capsys, "train", "-o", run_copy, "--resume", "--epochs", 5, "-q")
    assert f"{run_copy / 'config.json'}: {message}" in err
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


def test_a_header_s_state_is_read_as_the_kinds_of_value_the_state_made_now_holds():
    from neuralda.run import json_like

    fresh = {"lr": 0.001, "betas": (0.9, 0.999), "amsgrad": False, "fused": None, "mode": "min", "params": [0, 1]}
    saved = {"lr": 1e-3, "betas": [0.9, 0.999], "amsgrad": None, "fused": True, "mode": "max", "params": [0, 1]}
    assert json_like(saved, fresh)  # a CPU's optimizer (fused None) resumed on a GPU's (fused True), and back
    assert json_like({**saved, "new_in_torch_3": 1}, {**fresh, "dropped": 2})  # the keys both have
    for key, bad in [("lr", "x"), ("lr", True), ("lr", None), ("betas", [0.9]), ("amsgrad", 0), ("mode", 1),
                     ("params", "01")]:
        assert not json_like({**saved, key: bad}, fresh), key
    assert json_like(3, 0.5) and not json_like(float("nan"), "x") and not json_like({}, [])


def test_a_run_s_name_is_one_line(tiny_run, tmp_path):
    """A folder named with a blank line in it split the report's headings and tables, Markdown reading on between."""
    import shutil

    from neuralda.run import Run

    run = shutil.copytree(tiny_run, tmp_path / "nl\n\nname\x1b[2J")
    assert Run.open(run).name == "nl\\n\\nname\\x1b[2J"


DEEP = "[" * 5000 + "]" * 5000  # JSON nested deeper than Python's parser goes: a RecursionError traceback before


@pytest.mark.parametrize("name, command", [("config.json", "summary"), ("vocab.json", "generate")])
def test_a_run_file_nested_too_deeply_is_a_one_line_error(run_copy, capsys, name, command):
    (run_copy / name).write_text('{"tokens": ' + DEEP + "}")
    assert name in one_line_error(capsys, command, run_copy)


def test_a_log_line_nested_too_deeply_is_skipped_as_any_line_that_is_not_json(run_copy):
    before = Run.open(run_copy).metrics()
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 9, "note": ' + DEEP + "}\n")
    assert Run.open(run_copy).metrics() == before and len(before) == 4


@pytest.mark.parametrize("call", ["import_files", "write_report", "create_app", "encode", "detokenize", "scrape"])
def test_one_string_where_a_list_goes_is_an_error_not_its_characters(tiny_run, tmp_path, call):
    """import_files("poems.txt") looked for files "p", "o", ...; Vocab.encode("love") gave four <unk>s."""
    from neuralda.corpus import import_files
    from neuralda.report import write_report
    from neuralda.scrape import ScrapeConfig, scrape
    from neuralda.serve import create_app
    from neuralda.tokenizer import detokenize

    calls = {
        "import_files": lambda: import_files("poems.txt"),
        "write_report": lambda: write_report(str(tiny_run), tmp_path / "post.md"),
        "create_app": lambda: create_app(str(tiny_run)),
        "encode": lambda: Run.open(tiny_run).vocab.encode("love"),
        "detokenize": lambda: detokenize("hello world"),
        "scrape": lambda: scrape(ScrapeConfig(start_urls="http://127.0.0.1:9/", output=str(tmp_path / "c.jsonl"),
                                              body="p")),
    }
    with pytest.raises(NeuraldaError, match=r"must be a list, not one str: \['"):
        calls[call]()
