"""Training checkpoints: full state, written atomically, checked before use, loaded safely.

A checkpoint `ckpt-00001234.pt` holds model, optimizer, EMA, schedule state, step/epoch/batch
position, the data order of the current epoch, every RNG state (per process under torchrun), the
resolved config and the reslab version, all as tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: nothing in it can run code. Beside it, `ckpt-00001234.pt.sha256`
holds the file's SHA-256, so a truncated or damaged file is detected before it is used.

Writes go to a temp file in the same directory, are flushed and fsynced, renamed into place, and
the directory is fsynced: a crash, kill -9 or a full disk mid-write leaves the previous
checkpoint intact (a half-written temp file is never picked up and is removed by the next save).
"""

from __future__ import annotations

import hashlib
import io
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reslab.atomic import atomic_write_bytes
from reslab.errors import CheckpointError

PREFIX, SUFFIX = "ckpt-", ".pt"

# Globals a checkpoint may name beyond torch's own weights_only set (tensors, storages, dtypes,
# OrderedDict, plain containers and numbers). reslab needs none: RNG states and the data order are
# stored as tensors and lists. Anything added here is code the unpickler may call, so add only
# classes whose construction cannot run arbitrary code, and say why.
CHECKPOINT_SAFE_GLOBALS: list[Any] = []


# ---- RNG states ----------------------------------------------------------------------------------


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states of this process as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [list(internal), version, gauss],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- Writing -------------------------------------------------------------------------------------


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"{PREFIX}{step:08d}{SUFFIX}"


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(ckpt_dir: Path, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically with its checksum; keep the newest `keep` ones.

    On failure (e.g. no space left) the previous checkpoints are untouched and a CheckpointError
    says what happened and which checkpoint is still good.
    """
    path = checkpoint_path(ckpt_dir, step)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        atomic_write_bytes(_digest_path(path), (hashlib.sha256(data).hexdigest() + "\n").encode())
    except OSError as exc:
        # The new file may have landed without its checksum: remove both so nothing half-done stays.
        for leftover in (path, _digest_path(path)):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        previous = [p.name for p in list_checkpoints(ckpt_dir) if p != path] if ckpt_dir.is_dir() else []
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"could not write checkpoint {path} ({exc.strerror or exc}); {kept}. "
            "Free some space (or fix the directory), then resume."
        ) from exc
    for stale in ckpt_dir.glob(f".{PREFIX}*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        _digest_path(old).unlink(missing_ok=True)
    return path


# ---- Reading -------------------------------------------------------------------------------------


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints oldest first (the zero-padded step makes name order step order)."""
    return sorted(ckpt_dir.glob(f"{PREFIX}*{SUFFIX}"))


def verify(path: Path) -> str | None:
    """None when the file matches its checksum; otherwise what is wrong."""
    digest_file = _digest_path(path)
    if not digest_file.is_file():
        return "its .sha256 checksum file is missing (the write was cut short?)"
    expected = digest_file.read_text().strip()
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    return None if actual == expected else "its content does not match the stored checksum (damaged or truncated)"


def _unsafe_globals(path: Path) -> list[str]:
    """Names of the code a pickle would call beyond the weights_only set; found without running it."""
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a torch zip file (e.g. a bare pickle): no names to give
        return []


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint after checking its checksum; never unpickles code."""
    path = Path(path)
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is not usable: {problem}")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        unsafe = _unsafe_globals(path)
        what = f"it would call {', '.join(unsafe)}" if unsafe else f"{type(exc).__name__}"
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds more than tensors and plain values ({what}); "
            "reslab never runs code from a checkpoint"
        ) from exc


def load_latest_good(ckpt_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that passes its checksum, warning about each damaged newer one."""
    ckpt_dir = Path(ckpt_dir)
    candidates = list_checkpoints(ckpt_dir) if ckpt_dir.is_dir() else []
    if not candidates:
        raise CheckpointError(f"no checkpoints in {ckpt_dir}; nothing to resume")
    problems = []
    for path in reversed(candidates):
        try:
            payload = load_checkpoint(path, map_location)
        except CheckpointError as exc:
            problems.append(str(exc))
            warnings.warn(f"{exc}; falling back to an older checkpoint", stacklevel=2)
            continue
        return path, payload
    raise CheckpointError(f"no usable checkpoint in {ckpt_dir}: " + "; ".join(problems))


def set_aside_newer(ckpt_dir: Path, good: Path) -> list[Path]:
    """Rename checkpoints newer than `good` (they failed to load) to *.damaged, so that keep-K
    pruning never deletes the good one in their favour and resume does not try them again."""
    moved = []
    for path in list_checkpoints(ckpt_dir):
        if path.name > good.name:
            for f in (path, _digest_path(path)):
                if f.exists():
                    f.replace(f.with_name(f.name + ".damaged"))
            moved.append(path)
    return moved
