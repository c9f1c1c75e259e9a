"""Training checkpoints: what they hold (`Checkpoint`), and how they are written, checked and read.

A checkpoint `checkpoints/ckpt-00001234.pt` (names: `reslab.rundir.RunDir`) holds model,
optimizer, EMA and gradient-scaler state, the schedule state, the step/epoch/batch position, the
data order of the current epoch, every RNG state (per process under torchrun), the best evaluation
so far (and under train.keep=best its weights), the resolved config and the reslab version, all as
tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: nothing in it can run code. Beside it, `ckpt-00001234.pt.sha256`
holds the file's SHA-256, so a truncated or damaged file is detected before it is used.

Write protocol: the checksum file is written first, then the checkpoint, each to a temp file in the
same directory, flushed, fsynced and renamed into place (`reslab.atomic`). A kill at any point
leaves either a complete checkpoint with its checksum, or no new checkpoint at all (at most a
checksum without its checkpoint, or a temp file, both removed at the next start or resume); the
previous checkpoints are untouched until the new one is complete.

`Checkpoint.from_payload` checks what a loaded file holds (keys, types) before a resume uses
it; a file that fails any check is set aside as *.damaged and the previous one is tried.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reslab.atomic import atomic_write_bytes
from reslab.errors import CheckpointError
from reslab.rundir import RunDir

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


# ---- What a checkpoint holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """What a checkpoint holds beside the training state: per-process RNG states and data orders
    (rank order), the resolved config, the seconds trained so far, who wrote it."""

    rng: list[dict[str, Any]]
    data_order: list[torch.Tensor]
    config: dict[str, Any]
    elapsed: float
    world_size: int
    reslab_version: str = ""


@dataclass
class Checkpoint:
    """The state of a run at a step boundary, as plain values (no live objects)."""

    model: dict[str, torch.Tensor]  # the model's state dict
    optimizer: dict[str, Any]  # the optimizer's state dict
    position: dict[str, int]  # step, epoch, batch_in_epoch, skipped_steps
    schedule: dict[str, Any]  # the schedule's observed state (plateau, error-based warm-up)
    rng: list[dict[str, Any]]  # RNG states per process (rank order)
    data_order: list[torch.Tensor]  # each process's sample order of the current epoch
    config: dict[str, Any]  # the resolved config the run was started with
    elapsed: float  # seconds of training before this checkpoint
    world_size: int  # processes that wrote it
    reslab_version: str = ""
    ema: dict[str, torch.Tensor] | None = None  # the EMA copy's state dict (optim.ema_decay > 0)
    scaler: dict[str, Any] | None = None  # the fp16 gradient scaler's state
    # The best evaluation so far (reslab.train.state.BestSoFar: step, error, stale, seen_step,
    # record); None in checkpoints of reslab before train.keep / train.early_stop
    best: dict[str, Any] | None = None
    best_weights: dict[str, torch.Tensor] | None = None  # the best evaluation's weights (train.keep=best)
    path: Path | None = field(default=None, compare=False)  # where it was read from

    POSITION_KEYS = ("step", "epoch", "batch_in_epoch", "skipped_steps")
    BEST_TYPES = {"step": int, "error": (int, float), "stale": int, "seen_step": int, "record": dict}

    @property
    def step(self) -> int:
        return self.position["step"]

    @classmethod
    def of(cls, training: dict[str, Any], run: RunRecord) -> Checkpoint:
        """A checkpoint of `training`, a `reslab.train.state.TrainingState.state_dict()` (model,
        optimizer, ema, scaler, schedule, position, best, best_weights), and what the run adds."""
        return cls(
            model=training["model"],
            optimizer=training["optimizer"],
            position=training["position"],
            schedule=training["schedule"],
            ema=training["ema"],
            scaler=training["scaler"],
            best=training["best"],
            best_weights=training["best_weights"],
            rng=run.rng,
            data_order=run.data_order,
            config=run.config,
            elapsed=run.elapsed,
            world_size=run.world_size,
            reslab_version=run.reslab_version,
        )

    def training_state(self) -> dict[str, Any]:
        """The `TrainingState.state_dict()` this checkpoint holds (`of`, reversed)."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "ema": self.ema,
            "scaler": self.scaler,
            "schedule": self.schedule,
            "position": dict(self.position),
            "best": self.best,
            "best_weights": self.best_weights,
        }

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "optimizer": self.optimizer,
            "state": {**self.position, "schedule": self.schedule},
            "rng": self.rng,
            "data_order": self.data_order,
            "config": self.config,
            "elapsed": self.elapsed,
            "reslab_version": self.reslab_version,
            "world_size": self.world_size,
        }
        if self.ema is not None:
            payload["ema"] = self.ema
        if self.scaler is not None:
            payload["scaler"] = self.scaler
        if self.best is not None:
            payload["best"] = self.best
        if self.best_weights is not None:
            payload["best_weights"] = self.best_weights
        return payload

    @classmethod
    def from_payload(cls, payload: Any, path: Path | None = None) -> Checkpoint:
        """Check the structure of a loaded checkpoint; a CheckpointError says what is wrong."""
        read = _PayloadReader(f"checkpoint {path}" if path else "checkpoint")
        if not isinstance(payload, dict):
            raise CheckpointError(
                f"{read.where} is not a reslab checkpoint (a {type(payload).__name__}, not a mapping)"
            )
        model = read.tensors(read.need(payload, "model", dict, "the model weights ('model')"), "'model'")
        state = read.need(payload, "state", dict, "the training position ('state')")
        position = {k: read.need(state, k, int, f"state.{k}") for k in cls.POSITION_KEYS}
        if any(v < 0 for v in position.values()):
            raise CheckpointError(f"{read.where}: negative training position {position}")
        world, rng, order = read.processes(payload)
        ema = payload.get("ema")
        if ema is not None and not isinstance(ema, dict):
            raise CheckpointError(f"{read.where}: 'ema' is not a state dict")
        best_weights = payload.get("best_weights")
        elapsed = payload.get("elapsed", 0.0)
        return cls(
            model=model,
            optimizer=read.need(payload, "optimizer", dict, "the optimizer state ('optimizer')"),
            position=position,
            schedule=read.need(state, "schedule", dict, "state.schedule"),
            rng=rng,
            data_order=order,
            config=read.need(payload, "config", dict, "the run's config ('config')"),
            elapsed=float(elapsed) if isinstance(elapsed, (int, float)) else 0.0,
            world_size=world,
            reslab_version=str(payload.get("reslab_version", "")),
            ema=ema,
            scaler=payload.get("scaler"),
            best=read.best(payload.get("best"), cls.BEST_TYPES),
            best_weights=read.tensors(best_weights, "'best_weights'", empty_ok=True)
            if best_weights is not None
            else None,
            path=path,
        )

    def eval_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights the run evaluates with: the EMA copy's when there is one (as training does)."""
        if self.ema is not None:
            return {k[len("module.") :]: v for k, v in self.ema.items() if k.startswith("module.")}
        return self.model


class _PayloadReader:
    """Typed access to the mapping a checkpoint file holds; each problem is a CheckpointError that
    names the file (`where`) and the part at fault."""

    def __init__(self, where: str) -> None:
        self.where = where

    def need(self, mapping: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        if not isinstance(mapping, dict) or key not in mapping:
            raise CheckpointError(f"{self.where} lacks {what}")
        if not isinstance(mapping[key], kind):
            raise CheckpointError(f"{self.where}: {what} has the wrong type ({type(mapping[key]).__name__})")
        return mapping[key]

    def tensors(self, value: Any, what: str, *, empty_ok: bool = False) -> dict[str, torch.Tensor]:
        """A state dict of tensors (non-empty unless `empty_ok`)."""
        if (
            not isinstance(value, dict)
            or not (value or empty_ok)
            or not all(isinstance(v, torch.Tensor) for v in value.values())
        ):
            raise CheckpointError(f"{self.where}: {what} is not a state dict of tensors")
        return value

    def processes(self, payload: dict[str, Any]) -> tuple[int, list[Any], list[Any]]:
        """(world size, RNG states, data orders): one state and one order per process."""
        world = self.need(payload, "world_size", int, "'world_size'")
        rng = self.need(payload, "rng", list, "the RNG states ('rng')")
        order = self.need(payload, "data_order", list, "the data order ('data_order')")
        if world < 1 or len(rng) != world or len(order) != world:
            raise CheckpointError(
                f"{self.where}: {len(rng)} RNG states and {len(order)} data orders for {world} process(es)"
            )
        return world, rng, order

    def best(self, best: Any, types: dict[str, type | tuple[type, ...]]) -> dict[str, Any] | None:
        """The best-so-far record (None in checkpoints of reslab before train.keep)."""
        if best is None:
            return None
        best = {k: self.need(best, k, kind, f"best.{k}") for k, kind in types.items()}
        if not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in best["record"].items()):
            raise CheckpointError(f"{self.where}: best.record is not a mapping of names to numbers")
        return best


# ---- Writing -------------------------------------------------------------------------------------


def _digest_text(data: bytes) -> bytes:
    return (hashlib.sha256(data).hexdigest() + "\n").encode()


def save_checkpoint(run: RunDir, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` (checksum first, then the file; see the module docstring) and keep
    the newest `keep` checkpoints (0 keeps all).

    On failure (e.g. no space left) the previous checkpoints are untouched and a CheckpointError
    says what happened and which checkpoint is still good.
    """
    path = run.checkpoint(step)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    try:
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run.digest_of(path), _digest_text(data))
        atomic_write_bytes(path, data)
    except OSError as exc:
        try:  # a checksum without its checkpoint must not stay: the step may be written again
            run.remove_checkpoint(path)
        except OSError:
            pass
        previous = [p.name for p in run.list_checkpoints() if p != path]
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"could not write checkpoint {path} ({exc.strerror or exc}); {kept}. "
            "Free some space (or fix the directory), then resume."
        ) from exc
    run.remove_stale_temps()  # left by a process killed mid-write
    for old in run.list_checkpoints()[:-keep] if keep > 0 else []:
        run.remove_checkpoint(old)
    return path


# ---- Reading -------------------------------------------------------------------------------------


def verify(path: Path) -> str | None:
    """None when the file matches its checksum; otherwise what is wrong."""
    digest_file = RunDir.digest_of(path)
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
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError):
        # ValueError: not a torch zip file (a bare pickle, garbage): no names to give. A damaged
        # archive (RuntimeError) or a read error names none either; anything else is a bug, raised.
        return []


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint file after checking its checksum; never unpickles code."""
    path = Path(path)
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is not usable: {problem}")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a file of unknown content: UnpicklingError for a global,
        # RuntimeError / EOFError / KeyError / ValueError for a malformed archive, by torch version; each
        # is the file's, said in one line, with the globals it would call when there are any)
        unsafe = _unsafe_globals(path)
        what = f"it would call {', '.join(unsafe)}" if unsafe else f"{type(exc).__name__}"
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds more than tensors and plain values ({what}); "
            "reslab never runs code from a checkpoint"
        ) from exc


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """`load_checkpoint` + `Checkpoint.from_payload`: a checked checkpoint or a CheckpointError."""
    return Checkpoint.from_payload(load_checkpoint(path, map_location), Path(path))


def load_latest_good(
    run: RunDir,
    check: Callable[[Checkpoint], None] = lambda checkpoint: None,
    map_location: str | torch.device = "cpu",
) -> tuple[Checkpoint, list[str]]:
    """The newest checkpoint that passes its checksum, its structure check and `check` (which
    raises CheckpointError for content the caller cannot use, e.g. weights of another shape).

    Each newer checkpoint that fails is set aside as *.damaged (so keep-K pruning never deletes the
    good one in its favour and no resume tries it again); returns the checkpoint and one message
    per file set aside. A CheckpointError when none is usable.
    """
    candidates = run.list_checkpoints()
    if not candidates:
        raise CheckpointError(f"no checkpoints in {run.checkpoints_dir}; nothing to resume")
    problems: list[str] = []
    for path in reversed(candidates):
        try:
            checkpoint = read_checkpoint(path, map_location)
            check(checkpoint)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        return checkpoint, problems
    raise CheckpointError(f"no usable checkpoint in {run.checkpoints_dir}: " + "; ".join(problems))


def set_aside_newer(run: RunDir, good: Path) -> list[Path]:
    """Rename the checkpoints newer than `good` (they failed to load) to *.damaged."""
    moved = [path for path in run.list_checkpoints() if path.name > good.name]
    for path in moved:
        run.set_aside(path)
    return moved
