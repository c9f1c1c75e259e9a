"""The end of a run with a val part, on the weights it keeps: flip test-time averaging kept only
where it lowers the val error (train.decide_tta), and a temperature fitted on val (train.calibrate,
what `reslab calibrate` does), both recorded with the weights so that eval, predict, serve and
export do the same.

One pass over the val images computes each image's logits and its mirror's (`logits_and_mirrors`);
from it come the val error without TTA, with flip TTA and on the mirror images alone, and the
logits the temperature is fitted on (with the TTA the weights keep). When flip TTA raises the val
error by more than noise, the mirror images are evidence that mirroring changes the class here, and
the run says so with the fix (data.hflip=false: no flip augmentation, no flip TTA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reslab.calibration import TemperatureFit, fit_calibration
from reslab.data.spec import EvalBatches
from reslab.evaluation import logits_and_mirrors
from reslab.rundir import Calibrated, FlipDecision

NOISE_Z = 2.0  # a difference in val errors counts when it exceeds this many standard errors (paired)


def _error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) != labels).float().mean().item()


def flip_decision(plain: torch.Tensor, mirrored: torch.Tensor, labels: torch.Tensor) -> FlipDecision:
    """Flip TTA is kept when it lowers the val error (ties: off, one forward pass instead of two)."""
    tta = (plain + mirrored) / 2
    errors = (_error(plain, labels), _error(tta, labels), _error(mirrored, labels))
    return FlipDecision(
        kept=errors[1] < errors[0],
        images=len(labels),
        val_error=errors[0],
        val_error_flip_tta=errors[1],
        val_error_mirrored=errors[2],
    )


def flip_hurts(plain: torch.Tensor, mirrored: torch.Tensor, labels: torch.Tensor) -> bool:
    """True when averaging with the mirror images loses more val images than it wins by more than
    NOISE_Z standard errors of the paired difference (McNemar's test, normal approximation)."""
    right, right_tta = plain.argmax(1) == labels, ((plain + mirrored) / 2).argmax(1) == labels
    lost, won = int((right & ~right_tta).sum()), int((~right & right_tta).sum())
    return lost > won and lost - won > NOISE_Z * math.sqrt(lost + won)


@dataclass(frozen=True)
class EndChecks:
    """What the end-of-run checks decided for the kept weights."""

    flip: FlipDecision | None  # None: the run had no flip TTA to decide on
    flip_hurts: bool
    temperature: float | None  # None: not calibrated (train.calibrate=false)
    fit: TemperatureFit | None

    @property
    def tta_flip(self) -> bool | None:
        """Whether the weights keep flip TTA (None: as the run evaluated)."""
        return self.flip.kept if self.flip is not None else None

    def calibrated(self) -> Calibrated | None:
        if self.fit is None or self.temperature is None:
            return None
        f = self.fit
        return Calibrated(
            temperature=self.temperature,
            images=f.images,
            ece_before=f.before.ece,
            ece_after=f.after.ece,
            nll_before=f.before.nll,
            nll_after=f.after.nll,
        )

    def lines(self) -> list[str]:
        """What the run prints about them, a line each."""
        lines = []
        if self.flip is not None:
            f = self.flip
            verdict = "kept" if f.kept else "dropped: it did not lower the val error"
            lines.append(
                f"flip TTA {verdict} (val error {100 * f.val_error:.2f}% without, {100 * f.val_error_flip_tta:.2f}% "
                f"with, {100 * f.val_error_mirrored:.2f}% on mirror images; {f.images:,} images)"
            )
        if self.flip_hurts:
            lines.append(
                "mirror images are classified worse than the originals here: if mirroring changes the class "
                "(digits, letters, text), train with --set data.hflip=false (no flip augmentation, no flip TTA)"
            )
        if self.fit is not None and self.temperature is not None:
            lines.append(self.fit.line(self.temperature))
        return lines


@dataclass(frozen=True)
class EndSettings:
    """What the checks need to know of the run."""

    tta_flip: bool  # train.tta_flip: how the run evaluated
    decide_tta: bool  # train.decide_tta (with tta_flip): decide flip TTA on val
    calibrate: bool  # train.calibrate
    precision: str
    dataset: str  # for the temperature's record
    val_part: str | None  # how the val part was made (DataSource.describe_val)


def end_checks(model: nn.Module, val: EvalBatches, device: torch.device, settings: EndSettings) -> EndChecks:
    """The checks on the kept network `model` over the val part's batches."""
    plain, mirrored, labels = logits_and_mirrors(model, val, device, settings.precision)
    flip = flip_decision(plain, mirrored, labels) if settings.decide_tta and settings.tta_flip else None
    hurts = flip is not None and flip_hurts(plain, mirrored, labels)
    temperature, fit = None, None
    if settings.calibrate:
        tta = flip.kept if flip is not None else settings.tta_flip
        temperature, fit = fit_calibration(
            (plain + mirrored) / 2 if tta else plain,
            labels,
            dataset=settings.dataset,
            part="val",
            tta=tta,
            val_part=settings.val_part,
        )
    return EndChecks(flip=flip, flip_hurts=hurts, temperature=temperature, fit=fit)
