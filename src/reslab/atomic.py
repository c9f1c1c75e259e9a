"""Atomic file writes, shared by checkpoints, weights and the dataset cache.

A file is written to a temp file in the same directory, flushed and fsynced, given the mode a
plain open() would give it, renamed over the target, and the directory is fsynced: a crash, a
kill or a full disk leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def default_file_mode() -> int:
    """What open() would give a new file under the current umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(directory: Path) -> None:
    """Make renames durable; best effort, as not every platform can fsync a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, sync_dir: bool = True) -> None:
    """Write `path` through `write(file)`; see the module docstring. Errors leave no temp file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temp files (`.NAME.XXXX.tmp`) that a write killed mid-way left in `directory`.

    Call it only where no other process is writing (at the start or resume of a run)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for stale in directory.glob(".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed
