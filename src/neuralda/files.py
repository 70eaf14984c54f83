"""Files written so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import NeuraldaError


# The temporary file of an atomic write (mkstemp's prefix, 8 random characters, suffix): one a killed process left is
# a partial copy of the file it was writing (a 190 MB checkpoint for the seed's "last").
_TEMPORARY = r"\.{}\.[a-z0-9_]{{8}}\.tmp"
PARTIAL_WRITE = re.compile(_TEMPORARY.format(".+"))


Payload = bytes | str | Callable[[Path], None]


def atomic_write(path: str | os.PathLike, data: Payload) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync it, then rename; ``data`` may
    also be a function that writes the file at the path it is given (a checkpoint streamed from its tensors).

    A write that fails (a full disk, no permission) leaves the old file as it was and is a one-line error. A
    symlink is written through: the file it points to is replaced, and the link stays.
    """
    write_together({path: data})


def write_together(files: dict[str | os.PathLike, Payload]) -> None:
    """``atomic_write`` for several files that belong together (a report, its plot and its page): each is written
    and synced to a temporary file first, and renamed into place only once all are, so a failed write leaves every
    old file as it was and no new one beside them."""
    staged: list[tuple[str, Path]] = []
    replaced: list[Path] = []
    path = Path()
    try:
        for path, data in files.items():
            path = Path(path)
            tmp = _stage(path, data.encode("utf-8") if isinstance(data, str) else data)
            if tmp:
                staged.append((tmp, path))
        for tmp, path in staged:
            os.replace(tmp, os.path.realpath(path))
            replaced.append(path)
    except BaseException as e:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = "; the previous file is untouched" if path.exists() else ""
            if replaced:  # a rename refused (an immutable file) after others were done: a rare failure, said
                kept += f" (written before it: {', '.join(map(str, replaced))})"
            raise NeuraldaError(f"{path}: could not write it ({why_not_written(path, e)}){kept}") from None
        raise


def _stage(path: Path, payload: bytes | Callable[[Path], None]) -> str | None:
    """``payload`` written and synced to a temporary file beside the file ``path`` names (through a symlink: renaming
    onto a link would replace the link, not the file the user meant), which it returns; a device or FIFO
    (/dev/null, /dev/stdout) is written into at once, and None returned: a rename would replace the device."""
    real = Path(os.path.realpath(path))
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        with open(path, "wb") as f:
            if callable(payload):  # given the device's path, safetensors would rename a file over it
                with tempfile.TemporaryDirectory() as folder:
                    payload(Path(folder) / real.name)
                    with open(Path(folder) / real.name, "rb") as written:
                        shutil.copyfileobj(written, f)
            else:
                f.write(payload)
        return None
    real.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        if callable(payload):
            os.close(fd)
            payload(Path(tmp))  # it may put a file of its own there (safetensors renames one over it): reopened
            fd = os.open(tmp, os.O_RDWR)
        with os.fdopen(fd, "r+b" if callable(payload) else "wb") as f:
            # mkstemp makes the file private (0600); give it the mode the file had, or the one open() would give a
            # new file (0644 under the usual umask 022; a user's umask 077 keeps the corpus private).
            os.fchmod(f.fileno(), real.stat().st_mode & 0o777 if real.exists() else 0o666 & ~_umask())
            if not callable(payload):
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _umask() -> int:
    """The process's umask (only os.umask reads it, by setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_partial_writes(*folders: str | os.PathLike, of: str | None = None) -> None:
    """Delete the temporary files that atomic writes into ``folders`` left when their process was killed; with
    ``of``, only those of the file of that name."""
    pattern = PARTIAL_WRITE if of is None else re.compile(_TEMPORARY.format(re.escape(of)))
    for folder in map(Path, folders):
        if folder.is_dir():
            for path in folder.iterdir():
                if pattern.fullmatch(path.name) and path.is_file():
                    path.unlink(missing_ok=True)


def remove_partial_writes_of(*paths: str | os.PathLike) -> None:
    """Delete what atomic writes of the files ``paths`` left when killed (in a user's folder, only those)."""
    for path in paths:
        real = Path(os.path.realpath(path))  # where atomic_write puts its temporary file
        remove_partial_writes(real.parent, of=real.name)


def why_not_written(path: str | os.PathLike, error: OSError) -> str:
    """What stopped a write to ``path``, in words: "File exists" or "Not a directory" from a file where a folder of
    the path should be names that file."""
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        path = Path(path)
        nearest = next((p for p in (path, *path.parents) if p.exists()), None)
        if nearest is not None and not nearest.is_dir():
            return f"{nearest} is a file, not a folder"
    return str(error.strerror or error)


def check_file_name(given: str | os.PathLike, example: str) -> None:
    """Refuse a path that cannot be written as a file: no file name, a directory, or a file where a folder goes."""
    path = Path(given)
    if str(given).endswith("/") or os.path.basename(os.fspath(given)) in ("", ".", ".."):  # "x/." is a folder too
        raise NeuraldaError(f"no file name in {str(given)!r}; give one like {example}")
    if path.is_dir():
        raise NeuraldaError(f"{given} is a directory; give a file in it, like {path / example}")
    folder = next(p for p in path.parents if p.exists())  # the nearest existing one ("." or "/" at worst)
    if not folder.is_dir():
        raise NeuraldaError(f"{given}: {folder} is a file, not a folder")


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, where JSON nested deeper than Python's parser goes (a thousand brackets on a line of a hand-
    edited file) is a ``ValueError``, as any other malformed JSON, not a ``RecursionError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def json_text(obj: Any) -> str:
    """``obj`` as the pretty, UTF-8 JSON ``write_json`` writes."""
    text = json.dumps(obj, ensure_ascii=False, indent=2)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a path that is not UTF-8 (a lone surrogate): its \\udcXX escape reads back the same
        text = json.dumps(obj, indent=2)
    return text + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as pretty, UTF-8 JSON."""
    atomic_write(path, json_text(obj))


def append_line(path: str | os.PathLike, line: str | bytes) -> None:
    """Append one line (text as UTF-8) and flush it to disk, so a killed process keeps every line it finished; a
    failed write (a full disk) is a one-line error naming the file."""
    data = line.encode("utf-8") if isinstance(line, str) else line
    try:
        with open(path, "ab") as f:
            f.write(data.rstrip(b"\n") + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # its own message names no file: "No space left on device"
        raise NeuraldaError(f"{path}: could not add a line to it ({why_not_written(path, e)})") from None


@contextlib.contextmanager
def made_folder(path: Path) -> Iterator[None]:
    """``path`` made, with its missing parents, for the block; where the block fails, the folders made here are
    removed again while still empty (a run whose corpus could not be read leaves no folder behind). A symbolic link
    is followed, and ``..`` read after it (``missing/../mine`` is the folder ``mine``, never one made here)."""
    try:
        path = path.resolve()
    except RuntimeError:  # Python 3.11's word for a link that leads back to itself
        raise NeuraldaError(f"{path}: a symbolic link on the way loops back to itself") from None
    made = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def folder_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``path`` (flock on the folder itself: no lock file is left behind), or
    fail with one line where another process holds it (a `train` or a `demo` of that run). Where locks are not to be
    had (Windows, some network file systems) it holds none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(os.path.realpath(path), os.O_RDONLY)  # as made_folder reads it: missing/../run is run
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NeuraldaError(
                f"{path}: another neuralda process is using this run; wait for it to end, or stop it"
            ) from None
        except OSError:  # ENOLCK, EOPNOTSUPP: no locks here
            pass
        yield
    finally:
        os.close(fd)
