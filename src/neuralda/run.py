"""The run directory, the contract between ``train`` and every command after it.

runs/NAME/
  config.json          every setting used (so the run can be repeated)
  vocab.json           the vocabulary, from the training split only
  data/train.jsonl     the poems trained on, data/val.jsonl the held-out ones
  metrics.jsonl        one line per epoch
  samples.jsonl        a poem from "love" at each saved epoch
  checkpoints/*.safetensors   best, last (with the optimizer state), epoch-N

Checkpoints are safetensors with a JSON header: reading them never executes anything.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import os
import re
import reprlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NeuraldaError, shown
from .files import atomic_write, parse_json
from .models import MAX_HIDDEN, MAX_LAYERS
from .tokenizer import Vocab

FORMAT_VERSION = 1
_META_KEY = "neuralda"
_CHECKPOINT_NAME = re.compile(r"(best|last|epoch-\d+)\Z")
_MODEL_KEYS = {"arch": str, "hidden": int, "layers": int, "dropout": float}  # what every command reads to build the model


def _digest(tensors: dict[str, Any]) -> str:
    """SHA-256 of the tensors' names and bytes: safetensors has no checksum, and a flipped bit loads silently."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    """SHA-256 of the header's own values (epoch, learning rates, trainer state), the checksums left out: a flipped
    bit there ("lr": 0.001 read as 0.003) is as silent as one in the weights."""
    rest = {k: v for k, v in meta.items() if k not in ("sha256", "meta_sha256")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def save_checkpoint(path: Path, tensors: dict[str, Any], meta: dict) -> None:
    """Atomically write ``tensors`` (name -> tensor) and a JSON ``meta`` header with their checksums, streamed to
    the file: safetensors' ``save`` held the file twice as bytes (3 GB beside the seed's model at 120,000 words)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {**meta, "sha256": _digest(data), "meta_sha256": _meta_digest(meta)}
    atomic_write(path, functools.partial(_save_file, data, {_META_KEY: json.dumps(meta)}))


def _save_file(tensors: dict[str, Any], metadata: dict[str, str], path: Path) -> None:
    """safetensors' ``save_file``, whose failed writes (a full disk) are OSErrors, as any other file's."""
    from safetensors import SafetensorError
    from safetensors.torch import save, save_file

    if not _utf8(path):
        path.write_bytes(save(tensors, metadata=metadata))
        return
    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as e:  # "Error while serializing: I/O error: No space left on device (os error 28)"
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1]))) from None


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict]:
    """The tensors and JSON header of a checkpoint; a damaged file is a one-line error.

    Read in one go: a run still training replaces its checkpoints, and a header and tensors read apart could come
    from two files (the tensors would not match the header's checksum).
    """
    from safetensors.torch import load

    with _reading(path):
        raw = path.read_bytes()
        tensors = load(raw)
        meta = _meta(raw)
    # Checkpoints written before the checksum have none: they are read as they are.
    if "sha256" in meta and meta["sha256"] != _digest(tensors):
        raise NeuraldaError(f"{path}: damaged checkpoint (its bytes do not match the checksum saved with it)")
    return tensors, meta


def _utf8(path: Path) -> bool:
    """Whether safetensors can open ``path``: it takes UTF-8 names only, and a folder's name need not be (Python
    keeps its stray bytes as lone surrogates); such a file is written from bytes held whole."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checkpoint_meta(path: Path) -> dict:
    """A checkpoint's JSON header alone (its epoch, held-out loss ...), without reading its tensors."""
    with _reading(path), open(path, "rb") as f:
        head = f.read(8)  # a damaged length would have read() allocate up to 16 EB: no more than the file
        return _meta(head + f.read(min(int.from_bytes(head, "little"), os.fstat(f.fileno()).st_size)))


def _meta(raw: bytes) -> dict:
    """Our JSON header from the bytes of a safetensors file (its 8-byte length, then its JSON header, at least)."""
    header = parse_json(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    meta = parse_json(header.get("__metadata__", {}).get(_META_KEY, "{}"))
    if not isinstance(meta, dict):
        raise ValueError("its header is not a JSON object")
    if "meta_sha256" in meta and meta["meta_sha256"] != _meta_digest(meta):  # checkpoint_meta's readers too
        raise _Damaged("its header does not match the checksum saved with it")
    epoch = meta.get("epoch", 0)  # a header without its checksum (as before there was one) may say anything
    if not _whole(epoch) or epoch < 0:
        raise _Damaged(f"its epoch is {epoch!r}, not a whole number")
    return meta


class _Damaged(ValueError):
    """A checkpoint that reads but does not match its checksums."""


@contextlib.contextmanager
def _reading(path: Path):
    """Errors while reading checkpoint ``path`` as one line each."""
    try:
        yield
    except FileNotFoundError:
        raise NeuraldaError(f"{path}: no such checkpoint") from None
    except _Damaged as e:
        raise NeuraldaError(f"{path}: damaged checkpoint ({e})") from None
    except Exception as e:  # safetensors raises its own error types for truncated or corrupted files
        raise NeuraldaError(f"{path}: damaged checkpoint ({type(e).__name__}: {e})".splitlines()[0]) from None


def model_tensors(model) -> dict[str, Any]:
    """The model's weights, each stored once (tied weights share one tensor)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def load_model_tensors(model, tensors: dict[str, Any], where: Path) -> None:
    """Load weights saved by ``model_tensors``; a mismatch with the model is a one-line error."""
    weights = {k: v for k, v in tensors.items() if "/" not in k}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise NeuraldaError(f"{where}: the weights do not match the model ({first[0].strip()})") from None
    tied = set(model.state_dict()) - set(model_tensors(model))
    if unexpected or set(missing) - tied:
        raise NeuraldaError(f"{where}: the weights do not match the model (missing {sorted(set(missing) - tied)})")


def check_sizes(model, tensors: dict[str, Any], where: Path) -> None:
    """A one-line error when the weights' sizes are not those of ``model``, built on torch's meta device where it
    costs nothing: a config.json that says ``hidden: 12000`` beside weights of 32 made 10 GB of weights and spent
    12 minutes drawing them before ``load_model_tensors`` could say so."""
    for name, expected in model.state_dict().items():
        if name in tensors and tuple(tensors[name].shape) != tuple(expected.shape):
            raise NeuraldaError(
                f"{where}: the weights do not match the model ({name} is {list(tensors[name].shape)} here, "
                f"{list(expected.shape)} by config.json)"
            )


def read_epoch_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file of per-epoch records (metrics, samples); a torn line from a killed run, or a line
    damaged otherwise, is skipped."""
    if not path.exists():
        return []
    rows = []
    # A bad byte becomes U+FFFD: in a string the row is kept, elsewhere the line is not JSON and is skipped.
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = parse_json(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
    return rows


def printable(text: str) -> str:
    """``text`` from a file name or the command line with each byte that is not UTF-8 (which Python keeps as a lone
    surrogate, unwritable as UTF-8) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _whole(value: Any) -> bool:
    """Whether ``value`` from JSON is a whole number (``true`` is not one, though Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def json_like(saved: Any, fresh: Any) -> bool:
    """Whether ``saved`` (JSON from a checkpoint header) holds the kinds of value ``fresh`` (the same state made
    now) holds: numbers where it has numbers, lists as long, alike under the keys both have (a newer or older torch
    adds or drops some); anything where ``fresh`` has None (a setting not chosen yet), None too where it has a flag
    (the optimizer's ``fused`` is None on a CPU, true on a GPU)."""
    if fresh is None:
        return True
    if isinstance(fresh, bool):
        return saved is None or isinstance(saved, bool)
    if isinstance(fresh, str):
        return isinstance(saved, str)
    if isinstance(fresh, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(fresh, (list, tuple)):
        return isinstance(saved, list) and len(saved) == len(fresh) and all(map(json_like, saved, fresh))
    if isinstance(fresh, dict):
        return isinstance(saved, dict) and all(json_like(saved[k], fresh[k]) for k in saved.keys() & fresh.keys())
    return False


def check_types(config: dict, types: dict[str, Any], config_path: Path) -> None:
    """One-line errors for a key of ``types`` that ``config`` (an edited or foreign config.json) lacks or holds with
    another JSON type: int (a whole number, not true), float (any number), str, bool, ``X | None``, or
    ``tuple[int, ...]`` (a list)."""
    missing = [key for key in types if key not in config]
    if missing:
        raise NeuraldaError(f"{config_path}: not a neuralda run configuration (missing {', '.join(missing)})")
    for key, hint in types.items():
        if not _fits(config[key], hint):
            raise NeuraldaError(f"{config_path}: {key} should be {_describe(hint)}, not {reprlib.repr(config[key])}")


def _fits(value: Any, hint: Any) -> bool:
    args = typing.get_args(hint)
    if type(None) in args:
        return value is None or _fits(value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if hint is int:
        return _whole(value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if type(None) in args:
        return _describe(next(a for a in args if a is not type(None))) + " or null"
    if typing.get_origin(hint) is tuple:
        return "a list of whole numbers"
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}[hint]


def _check_model_keys(config: dict, config_path: Path) -> None:
    """One-line errors for a model setting that is missing, of the wrong type or out of range."""
    check_types(config, _MODEL_KEYS, config_path)
    ranges = (
        ("hidden", 1 <= config["hidden"] <= MAX_HIDDEN, f"a whole number from 1 to {MAX_HIDDEN:,}"),
        ("layers", 1 <= config["layers"] <= MAX_LAYERS, f"a whole number from 1 to {MAX_LAYERS:,}"),
        ("dropout", 0 <= config["dropout"] < 1, "a number from 0 up to (not including) 1"),
    )
    for key, ok, expected in ranges:
        if not ok:
            raise NeuraldaError(f"{config_path}: {key} should be {expected}, not {reprlib.repr(config[key])}")


@dataclass
class Run:
    """An opened run directory: its config and vocabulary; models are loaded on demand."""

    path: Path
    config: dict
    vocab: Vocab

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not path.is_dir():
            if path.exists():
                raise NeuraldaError(f"{path}: a file, not a run directory (the folder `neuralda train -o` made)")
            raise NeuraldaError(f"{path}: no such run directory")
        config_path = path / "config.json"
        try:
            config = parse_json(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NeuraldaError(f"{path}: not a run directory (no config.json); train one with `neuralda train`") from None
        except ValueError as e:
            raise NeuraldaError(f"{config_path}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise NeuraldaError(f"{config_path}: not a neuralda run configuration")
        version = config.get("format_version", 0)
        if not _whole(version):
            raise NeuraldaError(f"{config_path}: not a neuralda run configuration (format_version {reprlib.repr(version)})")
        if version > FORMAT_VERSION:
            raise NeuraldaError(f"{path}: written by a newer neuralda (format {version}); upgrade neuralda to read it")
        _check_model_keys(config, config_path)
        return cls(path, config, Vocab.load(path / "vocab.json"))

    @property
    def name(self) -> str:
        """The folder's name, printable (see ``printable``) in one line (``shown``: a report's table or heading broke
        at a newline in it); "." is named after the folder it stands for."""
        return shown(printable(Path(os.path.abspath(self.path)).name))

    def checkpoints(self) -> list[str]:
        """Saved checkpoint names: best, last, epoch-N (in epoch order)."""
        names = [
            p.stem for p in (self.path / "checkpoints").glob("*.safetensors")
            if _CHECKPOINT_NAME.match(p.stem) and p.is_file()
        ]
        return sorted(names, key=lambda n: (n.startswith("epoch-"), int(n[6:]) if n.startswith("epoch-") else 0, n))

    def checkpoint_path(self, name: str) -> Path:
        """The file of checkpoint ``name``; only names neuralda writes are accepted (no paths)."""
        if not isinstance(name, str):
            raise NeuraldaError(f"a checkpoint is named by text (best, last or epoch-N), not {name!r}")
        path = self.path / "checkpoints" / f"{name}.safetensors"
        if not _CHECKPOINT_NAME.match(name) or not path.is_file():
            have = ", ".join(self.checkpoints()) or "none yet"
            raise NeuraldaError(f"{self.path}: no checkpoint {name!r} (have: {have})")
        return path

    def checkpoint_meta(self, name: str) -> dict:
        """The JSON header of checkpoint ``name`` (see ``checkpoint_meta``)."""
        return checkpoint_meta(self.checkpoint_path(name))

    def build_model(self):
        """A fresh model of this run's architecture and sizes."""
        from .models import build_model

        c = self.config
        return build_model(c["arch"], len(self.vocab), c["hidden"], c["layers"], c["dropout"])

    def summary(self, title: str | None = None) -> str:
        """The Keras-style summary of this run's model (headed ``title``, else the run's name), counted on torch's
        meta device: no weights are made (the seed's model at 120,000 words has 500 MB of them)."""
        import torch

        from .models import summary_table

        with torch.device("meta"):
            return summary_table(self.build_model(), title or self.name)

    def load_model(self, checkpoint: str = "best", device: str = "cpu"):
        """The model with the weights of ``checkpoint``, in eval mode on ``device``, and the checkpoint's meta."""
        import torch

        path = self.checkpoint_path(checkpoint)
        tensors, meta = read_checkpoint(path)
        with torch.device("meta"):
            check_sizes(self.build_model(), tensors, path)
        with torch.random.fork_rng(devices=[]):  # its first weights, replaced at once, leave the caller's draws be
            model = self.build_model()
        load_model_tensors(model, tensors, path)
        return model.to(device).eval(), meta

    def metrics(self) -> list[dict]:
        """The rows of ``metrics.jsonl``, one per epoch trained."""
        return read_epoch_rows(self.path / "metrics.jsonl")

    def poems(self, split: str):
        """The run's training or held-out poems (``split`` is "train" or "val")."""
        from .corpus import read_corpus

        path = self.path / "data" / f"{split}.jsonl"
        # Bytes: read_corpus decodes the file, and says what is wrong with one it cannot read.
        if split == "val" and path.is_file() and not path.read_bytes().strip():
            return []
        return read_corpus(path, clean=False)  # train wrote them cleaned

    def training_texts(self) -> list[str]:
        """The texts of the training poems (what the copy guard reads)."""
        return [p.text for p in self.poems("train")]

    @functools.cached_property
    def lang(self) -> str | None:
        """The language (a BCP 47 tag) of over half the training poems, for the pages that show the model's poems;
        None where the poems give none, or no one language."""
        try:
            poems = self.poems("train")
        except NeuraldaError:  # a run copied without its data, or with it damaged, still writes (serve starts)
            return None
        tags = collections.Counter(p.lang for p in poems)
        tag, count = tags.most_common(1)[0] if tags else (None, 0)
        return tag if count * 2 > sum(tags.values()) else None
