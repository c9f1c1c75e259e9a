"""`TrainState`: where a run stands between two steps (what a checkpoint's position records), and
`BestSoFar`: the best evaluation so far, which train.keep=best and train.early_stop act on."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # next batch of the current epoch
    skipped_steps: int = 0  # steps skipped for non-finite values (on_nonfinite=skip)
    stop_requested: str = ""  # a signal name when SIGINT/SIGTERM arrived

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
