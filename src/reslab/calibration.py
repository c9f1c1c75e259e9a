"""Temperature scaling's records, shared by `reslab calibrate` (reslab.infer.calibrate) and the end
of a training run (reslab.train.trainer, train.calibrate): how well a set of logits is calibrated
(`Scores`), and a temperature fitted on held-out logits with what it did (`TemperatureFit`, the
record stored beside T in the weights' metadata). The fit itself is
`reslab.evaluation.fit_temperature` (Guo et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reslab.evaluation import calibration_metrics, fit_temperature


@dataclass(frozen=True)
class Scores:
    """How well one set of logits is calibrated (reslab.evaluation.CalibrationTally's metrics)."""

    nll: float  # mean -log p_y
    ece: float  # expected calibration error, a fraction
    brier: float  # multi-class Brier score, in [0, 2]

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor) -> Scores:
        m = calibration_metrics(logits, labels)
        return cls(m["nll"], m["ece"], m["brier"])


@dataclass(frozen=True)
class TemperatureFit:
    """Where T was fitted and what it did: the record stored beside T (WeightsMeta.temperature_fit)."""

    dataset: str
    part: str  # "val", or "train" / "test" when asked for
    images: int
    tta: str  # "flip" or "none": how the logits were computed, as evaluation computes them
    before: Scores  # T = 1, the logits as they are
    after: Scores  # logits / T
    val_part: str | None = None  # how the val part was carved (DataSource.describe_val), for part "val"

    def as_meta(self) -> dict[str, str | int | float]:
        """The flat record written into the weights' metadata (numbers rounded to 6 digits)."""
        record: dict[str, str | int | float] = {"dataset": self.dataset, "part": self.part, "images": self.images}
        record["tta"] = self.tta
        for name in ("nll", "ece"):
            record[f"{name}_before"] = round(getattr(self.before, name), 6)
            record[f"{name}_after"] = round(getattr(self.after, name), 6)
        if self.val_part:
            record["val_part"] = self.val_part
        return record

    def line(self, temperature: float) -> str:
        """One line: 'calibrated on 2,000 val images: T = 1.52, ECE 10.41% -> 1.20%, NLL 0.3121 -> 0.2504'."""
        b, a = self.before, self.after
        return (
            f"calibrated on {self.images:,} {self.part} images: T = {temperature:.4g}, ECE {100 * b.ece:.2f}% -> "
            f"{100 * a.ece:.2f}%, NLL {b.nll:.4f} -> {a.nll:.4f}"
        )


def fit_calibration(
    logits: torch.Tensor, labels: torch.Tensor, *, dataset: str, part: str, tta: bool, val_part: str | None = None
) -> tuple[float, TemperatureFit]:
    """(T, its record): T fitted on `logits` (N, classes) of held-out images with `labels` (N,)."""
    temperature = fit_temperature(logits, labels)
    record = TemperatureFit(
        dataset=dataset,
        part=part,
        images=len(labels),
        tta="flip" if tta else "none",
        before=Scores.of(logits, labels),
        after=Scores.of(logits / temperature, labels),
        val_part=val_part if part == "val" else None,
    )
    return temperature, record
