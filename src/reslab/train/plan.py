"""`RunPlan`: what a run decides once at its start from its config and data (how many steps, which
part it watches, the precision, the class weights), fixed from then on. The trainer reads it; the
files a run writes at its end (reslab.train.results) say what it was."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reslab.config import Config
from reslab.train.build import Data
from reslab.train.step import inverse_frequency_weights


def total_steps_of(cfg: Config, steps_per_epoch: int) -> int:
    if cfg.train.iterations > 0:
        return cfg.train.iterations
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch))


@dataclass(frozen=True)
class RunPlan:
    total: int  # optimizer steps of the whole run
    steps_per_epoch: int  # batches of one epoch of this process's share
    # The part whose top-1 error picks the kept weights, stops a run early and drives the plateau
    # schedule: "val" when the run has one, else "test" (the data source's `watch_part`).
    watch: str | None
    precision: str  # train.precision resolved for this machine ("auto" -> fp32 / bf16 / fp16)
    class_weights: torch.Tensor | None  # optim.class_weights=auto: from the training class counts (CPU)

    @classmethod
    def of(cls, cfg: Config, data: Data, precision: str) -> RunPlan:
        """The plan for `cfg` on `data`; `precision` is train.precision already resolved for the device."""
        steps_per_epoch = len(data.train)
        weights = inverse_frequency_weights(data.train.class_counts()) if cfg.optim.class_weights == "auto" else None
        return cls(
            total=total_steps_of(cfg, steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
            watch=data.source.watch_part,
            precision=precision,
            class_weights=weights,
        )
