"""`TrainState`: where a run stands between two steps (what a checkpoint's position records)."""

from __future__ import annotations

from dataclasses import dataclass


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
