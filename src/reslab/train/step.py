"""One training step as a pure function: `train_step(model, optimizer, batch, settings) -> StepResult`.

It takes the few settings a step needs (`StepSettings`), not the run's config, and calls nothing
back: the trainer decides what a result means (log it, stop on a NaN, count a skip). Speed
features (bf16/fp16 autocast) are switched here; the models stay device- and dtype-agnostic.
"""

from __future__ import annotations

import math
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
    # (num_classes,) float32 on the batch's device: cross-entropy weight of each class; None = unweighted
    class_weights: torch.Tensor | None = field(default=None, compare=False)


@dataclass
class StepResult:
    loss: torch.Tensor  # detached scalar (the batch's mean loss)
    wrong: torch.Tensor  # scalar count of wrong top-1 predictions in the batch
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


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """Forward, backward, clip and update on one batch; the model must be in train mode.

    A non-finite loss or gradient norm (fp32/bf16; under fp16 the scaler skips such steps itself)
    leaves the weights as they were and returns `nonfinite` set; with `skip_nonfinite` the BN
    running statistics that the forward pass updated are put back too, and the gradients dropped.
    """
    x, y = batch
    set_lr(optimizer, settings.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    # A skipped batch must not leave NaN in the BN running statistics its forward pass updated:
    # keep a copy of the buffers (small) to put back.
    skip_mode = settings.skip_nonfinite and scaler is None
    buffers = list(model.buffers()) if skip_mode else []
    saved_buffers = [b.detach().clone() for b in buffers]
    with autocast(x.device, settings.precision):
        logits = model(x)
        loss = F.cross_entropy(
            logits.float(), y, weight=settings.class_weights, label_smoothing=settings.label_smoothing
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    max_norm = settings.grad_clip if settings.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    loss_value = loss.item()
    what = nonfinite_part(loss, grad_norm) if scaler is None else ""
    if what:
        if skip_mode:
            optimizer.zero_grad(set_to_none=True)
            for b, saved in zip(buffers, saved_buffers):
                b.copy_(saved)
        return StepResult(loss.detach(), torch.zeros((), device=x.device), y.numel(), loss_value, grad_norm, what)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        wrong = (logits.argmax(1) != y).sum()
    return StepResult(loss.detach(), wrong, y.numel(), loss_value, grad_norm)
