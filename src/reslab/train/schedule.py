"""Learning-rate schedules as pure functions of the optimizer step.

`Schedule` binds one run's settings once (`ScheduleConfig`, peak lr, total steps, and the steps
of an epoch, which turn schedule.warmup_epochs into steps); the trainer asks it `lr(step)` before
every step. Two schedules depend on what training observed, and keep it
in a small `ScheduleState` saved in checkpoints:
plateau (how many decays happened) and the paper's ResNet-110 warm-up (lr 0.01 "until the
training error is below 80%", sec. 4.2), whose end is recorded as a step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from reslab.config import ScheduleConfig


def constant(step: int, lr: float) -> float:
    return lr


def step_decay(step: int, lr: float, step_size: int, gamma: float) -> float:
    return lr * gamma ** (step // step_size)


def multistep(step: int, lr: float, milestones: list[int], gamma: float) -> float:
    """lr * gamma^(milestones passed); the paper: 0.1, /10 at 32k and 48k iterations."""
    return lr * gamma ** sum(step >= m for m in milestones)


def cosine(step: int, total: int, lr: float, final_lr: float) -> float:
    t = min(step, total) / max(total, 1)
    return final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def linear(step: int, total: int, lr: float, final_lr: float) -> float:
    t = min(step, total) / max(total, 1)
    return lr + (final_lr - lr) * t


def onecycle(step: int, total: int, lr: float, start_lr: float, final_lr: float, pct_start: float) -> float:
    """Linear rise from start_lr to lr over pct_start of the steps, then linear decay to final_lr."""
    peak = max(1, round(total * pct_start))
    if step < peak:
        return start_lr + (lr - start_lr) * step / peak
    return lr + (final_lr - lr) * min(step - peak, total - peak) / max(total - peak, 1)


def linear_warmup(step: int, warmup_steps: int, warmup_lr: float, target: float) -> float:
    """From warmup_lr at step 0 to the schedule's target at step warmup_steps."""
    return warmup_lr + (target - warmup_lr) * step / warmup_steps


def warmup_steps_of(cfg: ScheduleConfig, steps_per_epoch: int) -> int:
    """The linear warm-up's length in steps: schedule.warmup_steps, or schedule.warmup_epochs times
    the steps of an epoch, rounded (at least 1 when set). `validate` refuses both set at once."""
    if cfg.warmup_epochs > 0:
        return max(1, round(cfg.warmup_epochs * steps_per_epoch))
    return cfg.warmup_steps


@dataclass
class ScheduleState:
    plateau_decays: int = 0  # times the plateau schedule has decayed
    plateau_best: float = math.inf  # best monitored value (validation loss / error) so far
    plateau_bad_evals: int = 0  # evaluations since it improved
    warmup_done_step: int = -1  # step at which train error first fell below warmup_until_error

    def observe_eval(self, value: float, cfg: ScheduleConfig) -> None:
        """Plateau bookkeeping after an evaluation (lower value = better)."""
        if value < self.plateau_best - 1e-12:
            self.plateau_best, self.plateau_bad_evals = value, 0
            return
        self.plateau_bad_evals += 1
        if self.plateau_bad_evals >= cfg.patience:
            self.plateau_decays += 1
            self.plateau_bad_evals = 0

    def observe_train_error(self, step: int, error: float, cfg: ScheduleConfig) -> None:
        if cfg.warmup_until_error > 0 and self.warmup_done_step < 0 and error < cfg.warmup_until_error:
            self.warmup_done_step = step


def lr_at(step: int, total: int, cfg: ScheduleConfig, base_lr: float, state: ScheduleState | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`. A warm-up in epochs needs the
    steps of an epoch: bind it with `Schedule` first."""
    if cfg.warmup_epochs > 0:
        raise ValueError("schedule.warmup_epochs is converted to steps by Schedule(..., steps_per_epoch=N)")
    state = state or ScheduleState()
    if cfg.warmup_until_error > 0 and state.warmup_done_step < 0:
        return cfg.warmup_lr  # paper: hold the small lr until training error < threshold
    if cfg.name == "onecycle":  # rises from warmup_lr itself: no linear warm-up on top
        return onecycle(step, total, base_lr, cfg.warmup_lr, cfg.final_lr, cfg.pct_start)
    lr = decayed_lr(step, total, cfg, base_lr, state)
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return linear_warmup(step, cfg.warmup_steps, cfg.warmup_lr, lr)
    return lr


def decayed_lr(step: int, total: int, cfg: ScheduleConfig, base_lr: float, state: ScheduleState) -> float:
    """The lr of schedule `cfg.name` at `step`, before any warm-up (onecycle has its own: `lr_at`)."""
    name = cfg.name
    if name == "constant":
        return constant(step, base_lr)
    if name == "step":
        return step_decay(step, base_lr, cfg.step_size, cfg.gamma)
    if name == "multistep":
        return multistep(step, base_lr, cfg.milestones, cfg.gamma)
    if name == "cosine":
        return cosine(step, total, base_lr, cfg.final_lr)
    if name == "linear":
        return linear(step, total, base_lr, cfg.final_lr)
    if name == "plateau":
        return base_lr * cfg.gamma**state.plateau_decays
    raise ValueError(f"unknown schedule {name!r}")


class Schedule:
    """The learning rate of a run: `lr_at` bound to its settings, plus what it has observed.
    `steps_per_epoch` turns schedule.warmup_epochs into warmup_steps (`warmup_steps_of`)."""

    def __init__(
        self,
        cfg: ScheduleConfig,
        base_lr: float,
        total_steps: int,
        state: ScheduleState | None = None,
        *,
        steps_per_epoch: int = 0,
    ):
        if cfg.warmup_epochs > 0:
            if steps_per_epoch < 1:
                raise ValueError("schedule.warmup_epochs needs the steps of an epoch (steps_per_epoch)")
            cfg = replace(cfg, warmup_steps=warmup_steps_of(cfg, steps_per_epoch), warmup_epochs=0.0)
        self.cfg, self.base_lr, self.total_steps = cfg, base_lr, total_steps
        self.state = state or ScheduleState()

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.cfg, self.base_lr, self.state)

    @property
    def watches_train_error(self) -> bool:
        """True while the error-based warm-up waits for the training error to fall."""
        return self.cfg.warmup_until_error > 0 and self.state.warmup_done_step < 0

    def observe_train_error(self, step: int, error: float) -> None:
        self.state.observe_train_error(step, error, self.cfg)

    def observe_eval(self, value: float) -> None:
        self.state.observe_eval(value, self.cfg)

    def state_dict(self) -> dict[str, float | int]:
        return asdict(self.state)

    def load_state_dict(self, values: dict[str, float | int]) -> None:
        self.state = ScheduleState(**values)
