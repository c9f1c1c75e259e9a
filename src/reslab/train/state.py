"""What a run has learned and where it stands: `TrainingState`, the one owner of everything a
checkpoint restores, with `state_dict()` / `load_state_dict()` as torch modules have them.

    TrainingState   model, optimizer, EMA, gradient scaler, schedule, `Position`, `BestSoFar` and
                    (train.keep=best) the best evaluation's weights
    Position        step / epoch / batch: where a run stands between two steps
    BestSoFar       the best evaluation so far, which train.keep=best and train.early_stop act on

`reslab.checkpoint.Checkpoint` converts to and from `TrainingState.state_dict()`; nothing else
reaches inside. The trainer runs the loop on it; resuming is `load_state_dict`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from reslab.errors import CheckpointError
from reslab.train.schedule import Schedule


@dataclass
class Position:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # next batch of the current epoch
    skipped_steps: int = 0  # steps skipped for non-finite values (on_nonfinite=skip)
    stop_requested: str = ""  # a signal name when SIGINT/SIGTERM arrived (not saved: a resume starts clear)

    def position(self) -> dict[str, int]:
        """What a checkpoint stores of it."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "skipped_steps": self.skipped_steps,
        }


@dataclass
class BestSoFar:
    """The evaluation with the lowest top-1 error on the watched part ("val", else "test") so far.

    Lower is better and a tie keeps the earlier evaluation. Every evaluation of a run is observed
    once, in step order; one at a step already observed (a resumed run evaluating its last step
    again) changes nothing. A checkpoint holds it (`as_dict`), so a resumed run continues with
    the same best and the same count of evaluations without improvement."""

    step: int = -1  # step of the best evaluation; -1 before the first
    error: float = math.inf  # its top-1 error on the watched part
    stale: int = 0  # evaluations since the best one without a lower error (train.early_stop counts these)
    seen_step: int = -1  # step of the newest evaluation observed
    record: dict[str, float] = field(default_factory=dict)  # the best evaluation's numbers (errors, losses)

    def observe(self, step: int, error: float, record: dict[str, Any]) -> bool:
        """Take in the evaluation of `step`; True when it is the new best."""
        if step <= self.seen_step:
            return False
        self.seen_step = step
        if error < self.error:
            self.step, self.error, self.stale = step, error, 0
            self.record = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            return True
        self.stale += 1
        return False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_weights(what: str, own: dict[str, torch.Tensor], saved: object, where: str) -> None:
    """A CheckpointError unless `saved` is a state dict with `own`'s keys and shapes."""
    if not isinstance(saved, dict) or set(saved) != set(own):
        raise CheckpointError(f"{where}: its {what} weights do not have this run's keys")
    wrong = [k for k in own if not isinstance(saved[k], torch.Tensor) or saved[k].shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{where}: its {what} weights have other shapes ({', '.join(wrong[:3])})")


class TrainingState:
    """A run's learnable and learned state: the model, its optimizer, the EMA copy (optim.ema_decay),
    the fp16 gradient scaler, the learning-rate schedule, the position and the best evaluation so far.

    `state_dict()` holds all of it as plain values (each part's own state dict); `load_state_dict`
    puts a saved one back (checked first by `check_fits`). A part that is absent (no EMA, no
    scaler) is None in both."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        *,
        ema: torch.optim.swa_utils.AveragedModel | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.model, self.optimizer, self.schedule, self.ema, self.scaler = model, optimizer, schedule, ema, scaler
        self.position = Position()
        self.best = BestSoFar()
        self.best_weights: dict[str, torch.Tensor] | None = None  # CPU copy of the best's weights (keep=best)

    @property
    def eval_model(self) -> nn.Module:
        """What evaluations (and the final weights) use: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def keep_best_weights(self) -> None:
        """Copy the evaluated weights as the best so far (train.keep=best), on the CPU."""
        self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.eval_model.state_dict().items()}

    def best_model(self) -> nn.Module:
        """A copy of the evaluated network holding the best evaluation's weights (train.keep=best)."""
        model = copy.deepcopy(self.eval_model)
        model.load_state_dict(self.best_weights)
        return model

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "schedule": self.schedule.state_dict(),
            "position": self.position.position(),
            "best": self.best.as_dict(),
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` (of this run's kind: `check_fits` first). A saved state without
        EMA or scaler leaves those fresh; one without a best record (older reslab) starts it anew."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state["schedule"])
        self.position = Position(**state["position"])
        self.best = BestSoFar(**state["best"]) if state.get("best") is not None else BestSoFar()
        self.best_weights = state.get("best_weights")

    def check_fits(self, state: dict[str, Any], where: str) -> None:
        """A CheckpointError unless a saved `state_dict()` fits this state's objects: the same
        weight keys and shapes, optimizer parameter groups and schedule fields."""
        for what, module, saved in (
            ("model", self.model, state["model"]),
            ("ema", self.ema, state.get("ema")),
            ("best", self.eval_model, state.get("best_weights")),
        ):
            if module is None or (what != "model" and saved is None):  # no EMA / best before: it starts fresh
                continue
            _check_weights(what, module.state_dict(), saved, where)
        groups = state["optimizer"].get("param_groups")
        own_sizes = [len(g["params"]) for g in self.optimizer.param_groups]
        if (
            not isinstance(groups, list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
            or [len(g["params"]) for g in groups] != own_sizes
        ):
            raise CheckpointError(f"{where}: its optimizer state does not fit this run's parameters")
        if set(state["schedule"]) != set(self.schedule.state_dict()):
            raise CheckpointError(f"{where}: its schedule state has other fields")
