"""The training step, `train_one_epoch` and `evaluate`, each returning plain metric dicts.

Speed features (bf16/fp16 autocast, channels_last) are switched here by config; the models stay
device- and dtype-agnostic. Everything that outlives one step (step counter, schedule state,
stop requests) lives in `TrainState`, which the loop checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from reslab.config import Config
from reslab.errors import ReslabError
from reslab.train.optim import set_lr
from reslab.train.schedule import ScheduleState, lr_at


class NonFiniteError(ReslabError):
    """A NaN or inf loss/gradient stopped the run."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # next batch of the current epoch
    skipped_steps: int = 0  # steps skipped for non-finite values (on_nonfinite=skip)
    schedule: ScheduleState = field(default_factory=ScheduleState)
    stop_requested: str = ""  # a signal name when SIGINT/SIGTERM arrived


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class StepContext:
    """What one training step needs, built once by the loop."""

    model: nn.Module  # possibly DDP-wrapped / compiled
    optimizer: torch.optim.Optimizer
    cfg: Config
    device: torch.device
    total_steps: int
    ema: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    after_step: Callable[[TrainState, dict], None] | None = None  # checkpoints, mid-epoch evals
    on_skip: Callable[[TrainState, str], None] | None = None  # told of each skipped non-finite step


def _nonfinite(loss: torch.Tensor, grad_norm: torch.Tensor) -> str:
    """What is not finite ("" when all is well), agreed by every process under torchrun: a NaN on
    one rank must stop or skip the step on all of them, or the others would wait forever."""
    flags = torch.stack([~torch.isfinite(loss.detach().float()), ~torch.isfinite(grad_norm.float())]).float()
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    bad_loss, bad_grad = flags.tolist()
    return "loss" if bad_loss else "gradient norm" if bad_grad else ""


def train_one_epoch(
    ctx: StepContext, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], state: TrainState, progress=None
) -> dict[str, float]:
    """Train over `batches` (the rest of one epoch) until it ends, total_steps is reached or a
    stop is requested. Returns {"loss", "error", "images", "seconds", "img_per_s"}."""
    cfg, model = ctx.cfg, ctx.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # Under on_nonfinite=skip a bad batch must not leave NaN in the BN running statistics that its
    # forward pass already updated: keep a copy of the buffers (small) to put back on a skip.
    skip_mode = cfg.train.on_nonfinite == "skip" and ctx.scaler is None
    buffers = list(model.buffers()) if skip_mode else []
    loss_sum = torch.zeros((), device=ctx.device)
    wrong_sum = torch.zeros((), device=ctx.device)
    images, start = 0, time.perf_counter()
    for x, y in batches:
        if state.step >= ctx.total_steps or state.stop_requested:
            break
        lr = lr_at(state.step, ctx.total_steps, cfg.schedule, cfg.optim.lr, state.schedule)
        set_lr(ctx.optimizer, lr)
        saved_buffers = [b.detach().clone() for b in buffers]
        with autocast(ctx.device, cfg.train.precision):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.optim.label_smoothing)
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            ctx.scaler.unscale_(ctx.optimizer)
        else:
            loss.backward()
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        loss_value = loss.item()
        what = _nonfinite(loss, grad_norm) if ctx.scaler is None else ""  # fp16: the scaler skips
        if what:
            value = loss_value if what == "loss" else grad_norm.item()
            value_text = value if not math.isfinite(value) else "on another process"
            where = (
                f"non-finite {what} ({value_text}) at step {state.step} "
                f"(epoch {state.epoch}, batch {state.batch_in_epoch})"
            )
            if not skip_mode:
                raise NonFiniteError(
                    f"{where}; stopped. The last good checkpoint is untouched; lower optim.lr, set "
                    "optim.grad_clip, or train.on_nonfinite=skip"
                )
            if state.skipped_steps >= cfg.train.max_skips:
                raise NonFiniteError(
                    f"{where}; stopped after {state.skipped_steps} skipped steps (train.max_skips="
                    f"{cfg.train.max_skips}). The last good checkpoint is untouched; lower optim.lr or set "
                    "optim.grad_clip"
                )
            ctx.optimizer.zero_grad(set_to_none=True)
            for b, saved in zip(buffers, saved_buffers):
                b.copy_(saved)
            state.skipped_steps += 1
            state.batch_in_epoch += 1
            if ctx.on_skip is not None:
                ctx.on_skip(state, where)
            continue
        if ctx.scaler is not None:
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            ctx.optimizer.step()
        if ctx.ema is not None:
            ctx.ema.update_parameters(model)
        with torch.no_grad():
            wrong = (logits.argmax(1) != y).sum()
        loss_sum += loss.detach() * y.numel()
        wrong_sum += wrong
        images += y.numel()
        state.step += 1
        state.batch_in_epoch += 1
        if cfg.schedule.warmup_until_error > 0 and state.schedule.warmup_done_step < 0:
            state.schedule.observe_train_error(state.step, wrong.item() / y.numel(), cfg.schedule)
        step_metrics = {"loss": loss_value, "lr": lr, "batch": y.numel()}
        if progress is not None:
            progress(state, step_metrics)
        if ctx.after_step is not None:
            ctx.after_step(state, step_metrics)
    seconds = time.perf_counter() - start
    n = max(images, 1)
    return {
        "loss": loss_sum.item() / n,
        "error": wrong_sum.item() / n,
        "images": images,
        "seconds": seconds,
        "img_per_s": images / max(seconds, 1e-9),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    device: torch.device,
    precision: str = "fp32",
    tta_flip: bool = False,
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Top-1/top-5 error, mean loss, per-class accuracy and the confusion matrix (rows = truth).

    `predict` maps a batch to logits (for 10-crop or multi-scale evaluation); by default the
    model's logits, averaged with those of the mirrored batch when tta_flip is set.
    """
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.int64, device=device)
    n, start = 0, time.perf_counter()
    for x, y in batches:
        with autocast(device, precision):
            if predict is not None:
                logits = predict(x)
            else:
                logits = model(x).float()
                if tta_flip:
                    logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        k = min(5, num_classes)
        top5_hits += (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes * num_classes).view(
            num_classes, num_classes
        )
        n += y.numel()
    confusion = confusion.cpu()
    correct = confusion.diag().sum().item()
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1).double()).tolist()
    n = max(n, 1)
    return {
        "top1_error": 1.0 - correct / n,
        "top5_error": 1.0 - top5_hits.item() / n,
        "accuracy": correct / n,
        "loss": loss_sum.item() / n,
        "images": n,
        "seconds": time.perf_counter() - start,
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
    }
