"""Training checkpoints: full state, written atomically, checked before use, loaded safely.

A checkpoint `ckpt-00001234.pt` holds model, optimizer, EMA, schedule state, step/epoch/batch
position, every RNG state, the resolved config and the reslab version, all as tensors and plain
Python values, so it loads with `torch.load(weights_only=True)`: nothing in it can run code.
Beside it, `ckpt-00001234.pt.sha256` holds the file's SHA-256, so a truncated or damaged file is
detected before it is used. Writes go to a temp file in the same directory, are flushed and
fsynced, renamed into place, and the directory is fsynced: a crash or a full disk mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reslab.errors import CheckpointError

PREFIX, SUFFIX = "ckpt-", ".pt"


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"{PREFIX}{step:08d}{SUFFIX}"


def save_checkpoint(ckpt_dir: Path, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically with its checksum; keep the newest `keep` ones.

    On failure (e.g. no space left) the previous checkpoints are untouched and a CheckpointError
    says what happened.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(ckpt_dir, step)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    try:
        atomic_write_bytes(path, data)
        atomic_write_bytes(path.with_name(path.name + ".sha256"),
                           (hashlib.sha256(data).hexdigest() + "\n").encode())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write checkpoint {path} ({exc.strerror or exc}); the previous checkpoint "
            "is intact. Free some space or point train.out_dir elsewhere, then resume."
        ) from exc
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints oldest first."""
    return sorted(ckpt_dir.glob(f"{PREFIX}*{SUFFIX}"))


def verify(path: Path) -> str | None:
    """None when the file matches its checksum; otherwise what is wrong."""
    digest_file = path.with_name(path.name + ".sha256")
    if not digest_file.is_file():
        return "its .sha256 checksum file is missing"
    expected = digest_file.read_text().strip()
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    return None if actual == expected else "its content does not match the stored checksum (damaged or truncated)"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint after checking its checksum; never unpickles code."""
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is not usable: {problem}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} holds more than plain tensors and values and was refused "
            f"({type(exc).__name__}); reslab never runs code from a checkpoint"
        ) from exc


def load_latest_good(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that passes its checksum, warning about each damaged newer one."""
    candidates = list_checkpoints(ckpt_dir)
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
    raise CheckpointError("no usable checkpoint in " + str(ckpt_dir) + ": " + "; ".join(problems))
