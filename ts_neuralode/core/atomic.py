"""Crash-safe writes: a process killed during a save (SIGKILL, OOM, power loss) leaves the previous file — or the
new one, complete — never a torn one.

Every file is written to a temporary file in the destination's own directory (so the final rename never crosses
a filesystem), flushed and fsynced, then renamed over the destination with :func:`os.replace`, which POSIX makes
atomic; the directory is fsynced so that the rename itself survives a power loss. Lightning's own checkpoint
save is not enough: fsspec stages it in the system temp directory and *copies* it into place when that is
another filesystem (a container's /tmp), and a kill during the copy leaves half a checkpoint.

A directory (the model directory: ``weights.pt`` + ``config.json``) is written whole into a temporary sibling
and swapped in with one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux. Where that call is missing or the
filesystem refuses it, two renames are used (old -> ``.<name>.old``, new -> ``<name>``); a kill between them
leaves the previous directory at ``.<name>.old``, which :func:`interrupted_backup` finds so the loader can say
where it is.

A kill leaves at most a temporary ``.<name>.*.tmp`` file or directory beside the destination; it is never read.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "atomic_write_dir",
    "interrupted_backup",
    "write_json",
    "read_json",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would have given a new file (mkstemp makes 0600)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem can open or fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], parents: bool = True) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary binary file beside it, which then replaces it.
    ``parents``: create missing parent directories (else a missing one is a FileNotFoundError)."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", parents: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode(encoding)), parents=parents)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """``data`` as a JSON file at ``path`` (one trailing newline), atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON value stored at ``path``; None when there is no such file. ``ValueError`` when the file is not
    JSON (also not UTF-8 text), ``OSError`` when it cannot be read: the caller says what it means for its file."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def load_json(path: str | os.PathLike, inside: str, fail: Callable[[Path, Exception], Exception]) -> tuple[Path, Any]:
    """``(file, value)``: the JSON value of the file ``path`` (a directory: its file ``inside``). When the file
    cannot be read (``OSError``) or is not JSON (``ValueError``, also not UTF-8 text) it raises ``fail(file, err)``:
    the caller's one line saying what to pass instead."""
    path = Path(path)
    file = path / inside if path.is_dir() else path
    try:
        return file, json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise fail(file, err) from err


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


# -- directories ------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _backup_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def interrupted_backup(path: str | os.PathLike) -> Path | None:
    """The previous directory left at ``.<name>.old`` by a save killed between its two renames (only on systems
    without an atomic exchange), when ``path`` itself is missing; else None."""
    path = Path(path)
    backup = _backup_of(path)
    return backup if not path.exists() and backup.is_dir() else None


def atomic_write_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Replace directory ``path`` atomically by what ``fill(tmp_dir)`` writes into a fresh temporary directory.

    Files written by ``fill`` are fsynced here. An existing ``path`` must be a directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync_dir(tmp)
        backup = _backup_of(path)
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous directory
        else:
            shutil.rmtree(backup, ignore_errors=True)
            os.rename(path, backup)
            os.rename(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)  # a backup left by an earlier interrupted save
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    return path
