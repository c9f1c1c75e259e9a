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


def train_one_epoch(ctx: StepContext, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    state: TrainState, progress=None) -> dict[str, float]:
    """Train over `batches` (the rest of one epoch) until it ends, total_steps is reached or a
    stop is requested. Returns {"loss", "error", "images", "seconds", "img_per_s"}."""
    cfg, model = ctx.cfg, ctx.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=ctx.device)
    wrong_sum = torch.zeros((), device=ctx.device)
    images, start = 0, time.perf_counter()
    for x, y in batches:
        if state.step >= ctx.total_steps or state.stop_requested:
            break
        lr = lr_at(state.step, ctx.total_steps, cfg.schedule, cfg.optim.lr, state.schedule)
        set_lr(ctx.optimizer, lr)
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
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm.item())) and ctx.scaler is None:
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            if cfg.train.on_nonfinite == "stop" or state.skipped_steps >= cfg.train.max_skips:
                raise NonFiniteError(
                    f"non-finite {what} ({loss_value if what == 'loss' else grad_norm.item()}) at step "
                    f"{state.step} (epoch {state.epoch}, batch {state.batch_in_epoch}); stopped. The last "
                    "good checkpoint is untouched; lower optim.lr, set optim.grad_clip, or "
                    "train.on_nonfinite=skip")
            state.skipped_steps += 1
            state.batch_in_epoch += 1
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
    return {"loss": loss_sum.item() / n, "error": wrong_sum.item() / n, "images": images,
            "seconds": seconds, "img_per_s": images / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
             *, device: torch.device, precision: str = "fp32", tta_flip: bool = False,
             predict: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
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
        confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
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
