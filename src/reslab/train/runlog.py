"""What a run reports: metrics.jsonl, TensorBoard and the progress bar (rank 0 only)."""

from __future__ import annotations

import sys
import time

from reslab.rundir import RunDir
from reslab.train.state import TrainState


class RunLog:
    """metrics.jsonl + TensorBoard + progress bar; silent on ranks other than 0."""

    def __init__(
        self, run: RunDir, enabled: bool, total_steps: int, start_step: int, progress: bool, synthetic: bool
    ) -> None:
        self.enabled = enabled
        self.run = run
        self.synthetic = synthetic
        self.writer = None
        self.bar = None
        self._last = (time.perf_counter(), start_step)
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        # A resumed run purges events logged after its checkpoint, so curves have no doubled stretch.
        self.writer = SummaryWriter(str(run.tensorboard), purge_step=start_step or None)
        if progress:
            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                desc="train" + (" [SYNTHETIC DATA]" if synthetic else ""),
                file=sys.stderr,
            )

    def step(self, state: TrainState, m: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            now = time.perf_counter()
            if now - self._last[0] > 1.0:
                rate = (state.step - self._last[1]) * m["batch"] / (now - self._last[0])
                self.bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.4g}", img_s=f"{rate:.0f}", refresh=False)
                self._last = (now, state.step)
        if self.writer is not None and state.step % 50 == 0:
            self.writer.add_scalar("train/loss", m["loss"], state.step)
            self.writer.add_scalar("train/lr", m["lr"], state.step)

    def eval(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.synthetic:
            record = {"data": "SYNTHETIC (smoke test, not a result)", **record}
        self.run.append_metrics(record)
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.writer.add_scalar(key.replace("_", "/", 1), value, record["step"])
        self.writer.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
