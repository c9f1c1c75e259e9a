"""One training step as a pure function: `train_step(model, optimizer, batch, settings) -> StepResult`.

It takes the few settings a step needs (`StepSettings`), not the run's config, and calls nothing
back: the trainer decides what a result means (log it, stop on a NaN, count a skip). Speed
features (bf16/fp16 autocast) are switched here; the models stay device- and dtype-agnostic.

Targets are class indices (B,) int64, or class probabilities (B, C) float (mixup / cutmix mix
them): `F.cross_entropy` takes both, with label smoothing and class weights.

Gradient accumulation (`accum_steps` = k): the batch is cut into k micro-batches that go forward
and backward one after the other, their gradients summing in `.grad`, then one optimizer step.
Each micro-batch's mean loss is weighted by its share of the batch's loss denominator (images, or
with class weights the targets' weights, as `F.cross_entropy`'s mean), so the summed gradient is
the whole batch's even when the micro-batches are unequal. Under DDP the first k - 1 backward
passes skip the all-reduce (`no_sync`); the last one averages the summed gradients across
processes. BatchNorm normalises each micro-batch with its own statistics (and updates its running
statistics k times), as it would with a smaller batch: only a network without batch statistics
(or BN in eval mode) gets exactly the gradient of the whole batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from reslab.device import autocast
from reslab.train.optim import set_lr


@dataclass(frozen=True)
class StepSettings:
    lr: float = 0.1
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    skip_nonfinite: bool = False  # on a NaN/inf: undo the BN statistics update and skip the update
    accum_steps: int = 1  # micro-batches per optimizer step (gradient accumulation); 1 = the batch at once
    # (num_classes,) float32 on the batch's device: cross-entropy weight of each class; None = unweighted
    class_weights: torch.Tensor | None = field(default=None, compare=False)


@dataclass
class StepResult:
    loss: torch.Tensor  # detached scalar (the batch's mean loss)
    wrong: torch.Tensor  # scalar count of wrong top-1 predictions in the batch (vs the most probable target)
    size: int  # images in the batch
    loss_value: float  # loss.item()
    grad_norm: torch.Tensor  # global gradient norm before clipping
    nonfinite: str = ""  # "loss" or "gradient norm" when the step was not taken (see train_step)


def inverse_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """Class weights n / (C * n_c) from the training images per class (optim.class_weights=auto):
    (C,) int64 -> (C,) float32. Every class then weighs as much in the loss as a class of average
    size, and a balanced set gets weight 1 everywhere. A class with no training image gets weight 0:
    no target has it, so its weight never enters the loss (n / 0 would be inf)."""
    counts = counts.to(torch.float64)
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (len(counts) * counts[present])
    return weights.to(torch.float32)


def nonfinite_part(loss: torch.Tensor, grad_norm: torch.Tensor) -> str:
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


def hard_targets(targets: torch.Tensor) -> torch.Tensor:
    """(B,) class indices: the targets themselves, or the most probable class of (B, C) probabilities."""
    return targets.argmax(1) if targets.ndim == 2 else targets


def loss_denominator(targets: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """What `F.cross_entropy`'s mean divides by: the number of images, or, for class-index targets
    with class weights, the sum of the targets' weights. A scalar float tensor."""
    if class_weights is not None and targets.ndim == 1:
        return class_weights[targets].sum()
    return torch.tensor(float(targets.shape[0]), device=targets.device)


def batch_loss(logits: torch.Tensor, targets: torch.Tensor, settings: StepSettings) -> torch.Tensor:
    """Mean cross-entropy of (B, C) logits against (B,) class indices or (B, C) probabilities,
    in float32 whatever the autocast precision."""
    return F.cross_entropy(
        logits.float(), targets, weight=settings.class_weights, label_smoothing=settings.label_smoothing
    )


def micro_batches(x: torch.Tensor, targets: torch.Tensor, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batch cut into k parts along dim 0 (sizes differ by at most one; none empty)."""
    return [(a, b) for a, b in zip(x.tensor_split(k), targets.tensor_split(k)) if len(a)]


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP's `no_sync` (no all-reduce in backward; the gradients accumulate locally) unless `sync`;
    nothing for a model that is not DDP. A `torch.compile`d DDP model is seen through."""
    ddp = getattr(model, "_orig_mod", model)
    if sync or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """Forward, backward (in `settings.accum_steps` micro-batches), clip and update on one batch;
    the model must be in train mode. `batch` is (images, targets), targets (B,) class indices or
    (B, C) class probabilities.

    A non-finite loss or gradient norm (fp32/bf16; under fp16 the scaler skips such steps itself)
    leaves the weights as they were and returns `nonfinite` set; with `skip_nonfinite` the BN
    running statistics that the forward passes updated are put back too, and the gradients dropped.
    """
    x, y = batch
    set_lr(optimizer, settings.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    # A skipped batch must not leave NaN in the BN running statistics its forward pass updated:
    # keep a copy of the buffers (small) to put back.
    skip_mode = settings.skip_nonfinite and scaler is None
    buffers = list(model.buffers()) if skip_mode else []
    saved_buffers = [b.detach().clone() for b in buffers]
    optimizer.zero_grad(set_to_none=True)
    parts = micro_batches(x, y, settings.accum_steps)
    whole = loss_denominator(y, settings.class_weights) if len(parts) > 1 else None
    losses, wrong = [], torch.zeros((), dtype=torch.int64, device=x.device)
    for i, (xi, yi) in enumerate(parts):
        with gradient_sync(model, sync=i == len(parts) - 1):
            with autocast(x.device, settings.precision):
                logits = model(xi)
                loss = batch_loss(logits, yi, settings)
            if whole is not None:  # this micro-batch's share of the whole batch's mean
                loss = loss * (loss_denominator(yi, settings.class_weights) / whole)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        losses.append(loss.detach())
        with torch.no_grad():
            wrong += (logits.argmax(1) != hard_targets(yi)).sum()
    loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
    if scaler is not None:
        scaler.unscale_(optimizer)
    max_norm = settings.grad_clip if settings.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    loss_value = loss.item()
    what = nonfinite_part(loss, grad_norm) if scaler is None else ""
    if what:
        if skip_mode:
            optimizer.zero_grad(set_to_none=True)
            for b, saved in zip(buffers, saved_buffers):
                b.copy_(saved)
        return StepResult(loss, torch.zeros((), device=x.device), len(x), loss_value, grad_norm, what)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepResult(loss, wrong, len(x), loss_value, grad_norm)


class EpochMeter:
    """Running loss, error and throughput of the steps taken in one epoch."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.wrong_sum = torch.zeros((), device=device)
        self.images, self.start = 0, time.perf_counter()

    def add(self, result: StepResult) -> None:
        self.loss_sum += result.loss * result.size
        self.wrong_sum += result.wrong
        self.images += result.size

    def result(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.start
        n = max(self.images, 1)
        return {
            "loss": self.loss_sum.item() / n,
            "error": self.wrong_sum.item() / n,
            "images": self.images,
            "seconds": seconds,
            "img_per_s": self.images / max(seconds, 1e-9),
        }
