"""What a run reports: metrics.jsonl, TensorBoard, the progress bar and its lines (rank 0 only).

The lines a run prints on stderr, around the progress bar (or without one), are written here:

    data: ...                                      (Data.summary_lines)
    model resnet20 (0.27M parameters); optimizer sgd lr 0.1, momentum 0.9, weight decay 0.0001; ...
    class weights (optim.class_weights=auto, n / (C n_c)): cat 0.525 (400 images), dog 10.5 (20 images)
    watching val top-1 error: keeping the best evaluation's weights (train.keep=best); ...
    step 1200/4680 (epoch 2.56)  val top-1 92.31%  loss 0.2345  test top-1 91.80%  loss 0.2501  best 92.31% @ 1200
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from reslab.config import Config
from reslab.rundir import RunDir
from reslab.train.schedule import warmup_steps_of
from reslab.train.state import BestSoFar, Position

# ---- the lines ---------------------------------------------------------------------------------


def eval_line(record: dict[str, Any], total: int, watch: str | None, best: BestSoFar) -> str:
    """One evaluation: top-1 accuracy and loss of each part (the watched one first), and the best
    top-1 accuracy of the watched part so far with its step."""
    parts = sorted(
        (k.removesuffix("_top1_error") for k in record if k.endswith("_top1_error")), key=lambda p: p != watch
    )
    text = f"step {record['step']}/{total} (epoch {record['epoch']:.2f})"
    for part in parts:
        text += f"  {part} top-1 {100 * (1 - record[f'{part}_top1_error']):.2f}%  loss {record[f'{part}_loss']:.4f}"
    if best.step >= 0:
        text += f"  best {100 * (1 - best.error):.2f}% @ {best.step}"
    return text


def setup_line(cfg: Config, parameters: int, total: int, steps_per_epoch: int) -> str:
    """The model, the optimizer and the schedule, on one line."""
    o, sc = cfg.optim, cfg.schedule
    extras = f", EMA {o.ema_decay:g}" if o.ema_decay else ""
    extras += f" every {o.ema_every} steps" if o.ema_decay and o.ema_every > 1 else ""
    extras += f", stochastic depth {cfg.model.drop_path_rate:g}" if cfg.model.drop_path_rate else ""
    model = f"model {cfg.model.name} ({parameters / 1e6:.2f}M parameters{extras})"
    if o.name == "sgd":
        optimizer = f"optimizer sgd lr {o.lr:g}, momentum {o.momentum:g}{' (Nesterov)' if o.nesterov else ''}"
    else:
        optimizer = f"optimizer {o.name} lr {o.lr:g}, betas {o.betas[0]:g}/{o.betas[1]:g}"
    optimizer += f", weight decay {o.weight_decay:g}{' (not on BN and biases)' if o.no_decay_bn_bias else ''}"
    optimizer += f", label smoothing {o.label_smoothing:g}" if o.label_smoothing else ""
    optimizer += f", gradient clip {o.grad_clip:g}" if o.grad_clip else ""
    details = {
        "step": f"x{sc.gamma:g} every {sc.step_size} steps",
        "multistep": f"x{sc.gamma:g} at steps {', '.join(map(str, sc.milestones)) or 'none'}",
        "cosine": f"down to {sc.final_lr:g}",
        "linear": f"to {sc.final_lr:g}",
        "onecycle": f"up from {sc.warmup_lr:g} over {sc.pct_start:.0%} of the steps, down to {sc.final_lr:g}",
        "plateau": f"x{sc.gamma:g} after {sc.patience} evaluations without a lower loss",
    }
    schedule = f"schedule {sc.name}" + (f" ({details[sc.name]})" if sc.name in details else "")
    warmup = warmup_steps_of(sc, steps_per_epoch)
    in_epochs = f" ({sc.warmup_epochs:g} epochs)" if sc.warmup_epochs else ""
    schedule += f", warm-up {warmup} steps{in_epochs} from {sc.warmup_lr:g}" if warmup else ""
    schedule += f", lr {sc.warmup_lr:g} until train error < {sc.warmup_until_error:g}" if sc.warmup_until_error else ""
    length = f"{total} steps ({total / steps_per_epoch:.2f} epochs of {steps_per_epoch}, batch {cfg.train.batch_size}"
    length += f" in {cfg.train.accum_steps} micro-batches)" if cfg.train.accum_steps > 1 else ")"
    return f"{model}; {optimizer}; {schedule}; {length}"


def class_weights_line(counts: torch.Tensor, weights: torch.Tensor, classes: list[str]) -> str:
    """The loss weight of each class with its training images (of many, the 3 lightest and 3 heaviest)."""

    def item(c: int) -> str:
        return f"{classes[c]} {weights[c].item():.3g} ({counts[c].item()} images)"

    groups = [list(range(len(classes)))]
    if len(classes) > 8:
        by_weight = sorted(groups[0], key=lambda c: weights[c].item())
        groups = [by_weight[:3], by_weight[-3:]]
    text = "class weights (optim.class_weights=auto, n / (C n_c)): "
    text += ", ..., ".join(", ".join(item(c) for c in group) for group in groups)
    absent = [classes[c] for c in range(len(classes)) if counts[c] == 0]
    if absent:
        text += f"; weight 0 for {len(absent)} class(es) without training images ({', '.join(absent[:5])})"
    return text


def watch_line(watch: str, keep: str, early_stop: int) -> str:
    what = []
    if keep == "best":
        what.append("keeping the best evaluation's weights (train.keep=best)")
    if early_stop:
        what.append(f"stopping after {early_stop} evaluations without a lower one (train.early_stop={early_stop})")
    return f"watching {watch} top-1 error: " + "; ".join(what)


# ---- the log -----------------------------------------------------------------------------------


class RunLog:
    """metrics.jsonl + TensorBoard + progress bar; silent on ranks other than 0."""

    def __init__(
        self,
        run: RunDir,
        enabled: bool,
        total_steps: int,
        start_step: int,
        progress: bool,
        synthetic: bool,
        resumed: bool = False,
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

        # A resumed run purges the events logged after its checkpoint's step (all of them when it had
        # none and starts again from step 0), so curves have no doubled stretch; those at that step
        # (e.g. the evaluation taken just before the checkpoint) stay.
        self.writer = SummaryWriter(str(run.tensorboard), purge_step=start_step + 1 if resumed else None)
        if progress:
            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                desc="train" + (" [SYNTHETIC DATA]" if synthetic else ""),
                file=sys.stderr,
            )

    def step(self, state: Position, m: dict) -> None:
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
            if isinstance(value, (int, float)) and key not in ("step", "epoch", "eval_images"):
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
