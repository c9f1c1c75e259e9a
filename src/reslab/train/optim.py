"""Optimizers, weight-decay groups and the EMA of weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from reslab.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """One group, or two with BN weights and biases (all 1-D parameters) free of weight decay."""
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """Exponential moving average of weights and BN buffers: avg = decay * avg + (1 - decay) * w at
    each update, the first update a copy. The trainer updates it after optimizer steps 0, N, 2N, ...
    (N = optim.ema_every, torchvision's --model-ema-steps; torchvision counts batches of an epoch).

    The decay is used as given, per update. torchvision's reference script instead rescales its
    --model-ema-decay by the run's length: 1 - decay' = min(1, (1 - decay) * world_size *
    batch_per_gpu * ema_steps / epochs); a recipe taking its EMA from there states the result as
    optim.ema_decay (recipes/imagenet-tv2.yaml). Nor is the EMA reset during the warm-up epochs,
    as torchvision's script does."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
