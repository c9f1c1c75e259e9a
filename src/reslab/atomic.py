"""Atomic file writes, shared by checkpoints, weights, config, summary and the dataset cache.

A file is written to a temp file in the same directory, flushed and fsynced, given the mode a
plain open() would give it, renamed over the target, and the directory is fsynced: a crash, a
kill or a full disk leaves either the old file or the new one, never half of either.

Test hook (fault injection): with RESLAB_FAULT_INJECT="GLOB:POINT[:N]" in the environment, the
N-th (default: first) atomic write in this process whose target file name matches GLOB (fnmatch,
e.g. "ckpt-00000001.pt.sha256" or "*.safetensors") kills the process with SIGKILL at POINT:

    opened    the temp file exists, nothing written to it
    written   the data is written (and flushed to the OS), not yet fsynced
    synced    the temp file is fsynced, not yet renamed over the target
    renamed   the target is in place, its directory not yet fsynced

so tests can check that a run killed at every write boundary resumes. The variable is read once per
process, at the first atomic write; unset, it costs one check per write. Never set it outside
tests.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

FAULT_INJECT_ENV = "RESLAB_FAULT_INJECT"
FAULT_POINTS = ("opened", "written", "synced", "renamed")


@dataclass
class FaultPlan:
    """Where RESLAB_FAULT_INJECT asks this process to die (see the module docstring)."""

    glob: str  # fnmatch pattern on the target's file name
    point: str  # one of FAULT_POINTS
    nth: int  # the nth matching write dies (1-based)
    seen: int = 0  # matching writes so far

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        glob, _, rest = text.partition(":")
        point, _, nth = rest.partition(":")
        if not glob or point not in FAULT_POINTS or (nth and not (nth.isdigit() and int(nth) >= 1)):
            raise ValueError(
                f"{FAULT_INJECT_ENV}={text!r}: expected GLOB:POINT[:N] with POINT one of "
                f"{', '.join(FAULT_POINTS)} and N >= 1"
            )
        return cls(glob, point, int(nth) if nth else 1)

    def point_for(self, name: str) -> str | None:
        """The point at which this write of `name` must die, or None."""
        if not fnmatch.fnmatchcase(name, self.glob):
            return None
        self.seen += 1
        return self.point if self.seen == self.nth else None


_UNREAD = object()
_fault_plan: FaultPlan | None | object = _UNREAD


def _fault_point(name: str) -> str | None:
    """Where the current write of `name` must die (RESLAB_FAULT_INJECT), or None: almost always."""
    global _fault_plan
    if _fault_plan is _UNREAD:
        text = os.environ.get(FAULT_INJECT_ENV)
        _fault_plan = FaultPlan.parse(text) if text else None
    return _fault_plan.point_for(name) if isinstance(_fault_plan, FaultPlan) else None


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


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
    die_at = _fault_point(path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if die_at == "opened":
                _die()
            write(f)
            f.flush()
            if die_at == "written":
                _die()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
        if die_at == "synced":
            _die()
        os.replace(tmp, path)
    except BaseException:  # even KeyboardInterrupt: the temp file goes, then the error goes on
        Path(tmp).unlink(missing_ok=True)
        raise
    if die_at == "renamed":
        _die()
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """For writers that take a file name (exporters, quantizers): yields a path in a temp folder
    beside `path`; when the block ends without an error that file is fsynced and renamed over
    `path`. An error (a failed verification included) leaves `path` as it was and no temp folder."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as folder:
        staging = Path(folder) / path.name
        yield staging
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(staging, default_file_mode())
        os.replace(staging, path)
    fsync_dir(path.parent)


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
