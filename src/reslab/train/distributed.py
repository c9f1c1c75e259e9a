"""torchrun / DistributedDataParallel plumbing: who is who, and agreeing across processes.

Only rank 0 touches the run directory; these helpers run a function there and share its result
(or its error) with every process, so a failure on rank 0 stops everyone instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from reslab.errors import ReslabError
from reslab.train.schedule import ScheduleState
from reslab.train.state import Position


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run started the process group, so it ends it
    backend: str = ""  # gloo | nccl

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; then gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if torch.distributed.is_initialized():
        return Dist(rank, world, local, False, torch.distributed.get_backend())
    if cuda:
        torch.cuda.set_device(local)  # before NCCL starts, so that it knows this process's GPU
    backend = "nccl" if cuda else "gloo"
    torch.distributed.init_process_group(backend)
    return Dist(rank, world, local, True, backend)


T = TypeVar("T")


def on_rank0(dist: Dist, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only (file writes, evaluation); every rank gets its result or its error,
    so that a failure on rank 0 stops all ranks with the same message instead of a hang."""
    if dist.world_size == 1:
        return fn()
    box: list[Any] = [None]
    error: Exception | None = None
    if dist.main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001  (not swallowed: raised here and, as a message, on every rank;
            # a rank-0 failure of any type must reach the others, which would otherwise wait forever)
            error = exc
            box[0] = ("error", str(exc) if isinstance(exc, ReslabError) else f"rank 0 failed: {exc!r}")
    torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise ReslabError(value)
    return value


def gather_to_rank0(dist: Dist, obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on rank 0; [] on the others."""
    if dist.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * dist.world_size if dist.main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out or []


def agree_on_stop(dist: Dist, state: Position, schedule: ScheduleState, pending: str, device: torch.device) -> None:
    """Take up a pending stop signal at a step boundary, the same step on every rank.

    Under torchrun a signal can reach one rank only, or ranks a moment apart; a rank that stopped
    alone would leave the others waiting in the gradient all-reduce. The warm-up end observed on
    any rank's shard is shared the same way, so every rank keeps the same learning rate.
    """
    if dist.world_size == 1:
        state.stop_requested = state.stop_requested or pending
        return
    signum = signal.Signals[pending].value if pending else 0
    flags = torch.tensor([signum, schedule.warmup_done_step], dtype=torch.long, device=device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    signum, warmup_done = flags.tolist()
    if signum and not state.stop_requested:
        state.stop_requested = signal.Signals(signum).name
    schedule.warmup_done_step = warmup_done


def combine_train_metrics(dist: Dist, m: dict, device: torch.device) -> dict:
    """An epoch's train loss and error over all shards (ranks see equal numbers of images);
    throughput summed over ranks."""
    if dist.world_size == 1:
        return m
    t = torch.tensor([m["loss"], m["error"], m["img_per_s"]], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    loss, error, img_per_s = t.tolist()
    return {**m, "loss": loss / dist.world_size, "error": error / dist.world_size, "img_per_s": img_per_s}


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers, to check that all ranks hold the same weights."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
