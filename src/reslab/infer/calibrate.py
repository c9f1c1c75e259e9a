"""Temperature scaling: fit a temperature on held-out images and store it with the weights.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one number
T > 0 divides the logits before the softmax, chosen to minimise the negative log-likelihood on
images the network was not trained on (reslab.evaluation.fit_temperature). It changes how
confident the probabilities are, never which class comes first. From then on `reslab eval`
reports the calibrated metrics beside the network's own, `predict` and `serve` divide the logits
by T, and `export` records it (metadata reslab.temperature).

Which images: the run's val part (data.split=paper or auto, an ImageFolder tree's val/ folder, a
CSV's val rows), or held-out images named by `dataset` / `data_dir`. Never the test part unless
asked for with part="test", since the test numbers are then no longer unbiased. A run trained with
data.split=full has no val part, and a bare weights file does not record how its training images
were split: both are refused with a message naming what to do. `calibrate` is the whole workflow;
`reslab calibrate` only parses its arguments and prints `Calibration.lines()`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from reslab.calibration import TemperatureFit, fit_calibration
from reslab.device import resolve_device
from reslab.errors import ConfigError
from reslab.evaluation import EvalPlan, EvalRequest, collect_logits, plan_evaluation
from reslab.rundir import RunDir
from reslab.weights import TEMPERATURE_RANGE, Weights, load_weights, resolve_weights, write_meta

PART_WARNINGS = {
    "train": "the network was trained on these images, on which it is more confident than on new ones: "
    "T comes out too low",
    "test": "the test part now chose T: test metrics with T are no longer an unbiased estimate",
}
EDGE = 1.01  # a T within this factor of either end of TEMPERATURE_RANGE is reported as at the edge


def fit_source(fit: Mapping[str, object]) -> str:
    """The words ' on N PART images of DATASET' from a stored `TemperatureFit.as_meta` record, for
    `reslab eval`'s calibrated line ('' when there is none)."""
    if not fit:
        return ""
    return f" on {fit.get('images', '?')} {fit.get('part', '')} images of {fit.get('dataset', '?')}"


@dataclass(frozen=True)
class Calibration:
    """The outcome of `calibrate`: T, how it was fitted, and where it was written."""

    model: str
    temperature: float
    fit: TemperatureFit
    written: Path  # the weights file that now holds T
    replaced: float | None = None  # the T fitted before, when the weights held one

    @property
    def at_edge(self) -> bool:
        low, high = TEMPERATURE_RANGE
        return min(self.temperature / low, high / self.temperature) < EDGE

    def lines(self) -> list[str]:
        """What `reslab calibrate` prints: T, the scores before and after, where T went."""
        fit, t = self.fit, self.temperature
        where = f"{fit.dataset} {fit.part} part" + (f": {fit.val_part}" if fit.val_part else "")
        lines = [f"{self.model}: T = {t:.4g} fitted on {fit.images} images ({where})"]
        lines.append(f"  {'':6}  {'NLL':>7}  {'ECE':>7}  {'Brier':>7}")
        for name, s, note in (
            ("before", fit.before, "T = 1: the logits as they are"),
            ("after", fit.after, f"T = {t:.4g}"),
        ):
            lines.append(f"  {name:6}  {s.nll:7.4f}  {100 * s.ece:6.2f}%  {s.brier:7.4f}  ({note})")
        if self.replaced is not None:
            lines.append(f"  (replaced T = {self.replaced:.4g}, fitted before)")
        lines.append(f"wrote T into {self.written}; eval, predict, serve and export use it from now on")
        return lines


def check_target(source: str, out: str | None) -> None:
    """Shipped or downloaded weights are not rewritten in place, and a copy is a .safetensors file."""
    named = Path(source)
    if out is None and not (named.is_file() or named.is_dir()):
        raise ConfigError(
            f"{source!r} names shipped or downloaded weights, which are not rewritten in place; "
            "write the calibrated copy with --out FILE.safetensors"
        )
    if out is not None and Path(out).suffix != ".safetensors":
        raise ConfigError(f"--out must name a .safetensors file; got {out}")


def no_val_part(where: str, reason: str) -> ConfigError:
    """The refusal when there is no val part to fit on, naming the ways forward."""
    return ConfigError(
        f"{where} has no val part to fit the temperature on: {reason}; name held-out images with "
        "--data imagefolder --data-dir DIR (a tree whose val/ folder the network was not trained on), or "
        "choose a part yourself: --part train (biased: the network was trained on it) or --part test "
        "(test numbers are then no longer unbiased)"
    )


def check_val_part(plan: EvalPlan, run: RunDir | None, named_data: bool) -> None:
    """A `no_val_part` error when the plan fits on a val part its source does not have."""
    source = plan.source
    if plan.part != "val" or "val" in source.parts:
        return
    where = f"{source.dataset} {source.data_dir}" if source.data_dir else source.dataset
    if named_data:
        reason = "it has no val part of its own (an ImageFolder tree's val/ folder, a CSV's val rows)"
    elif run is not None:
        reason = f"the run trained with data.split={source.split}, which holds out nothing"
    else:
        reason = (
            "a weights file does not record how its training images were split (for a run's val part, "
            "calibrate the run directory)"
        )
    raise no_val_part(where, reason)


def fit_on(weights: Weights, plan: EvalPlan, device: torch.device) -> tuple[float, TemperatureFit]:
    """(T, its record): the logits of the plan's part, as evaluation computes them, and T fitted on them."""
    logits, labels = collect_logits(weights, plan, device)
    return fit_calibration(
        logits,
        labels,
        dataset=plan.source.dataset,
        part=plan.part,
        tta=plan.tta_flip,
        val_part=plan.source.describe_val() if plan.part == "val" else None,
    )


def calibrate(
    source: str,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    part: str | None = None,
    out: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    warn: Callable[[str], object] | None = None,
) -> Calibration:
    """Fit T for the weights `source` (a run directory, weights file or shipped name) on its val part
    (or `dataset` / `data_dir` / `part`) and write it into the weights' metadata, atomically: in place,
    or into the copy `out`. `warn` receives one line per warning (default: `warnings.warn`)."""
    say = warn or (lambda line: warnings.warn(line, stacklevel=3))
    check_target(source, out)
    weights_path = resolve_weights(source)
    run = RunDir(source) if Path(source).is_dir() else None
    weights = load_weights(weights_path)
    request = EvalRequest(dataset, data_dir, part=part or "val", batch_size=batch_size)
    plan = plan_evaluation(weights, run, request)
    check_val_part(plan, run, named_data=dataset is not None)
    if plan.part in PART_WARNINGS:
        say(f"fitting on the {plan.part} part: {PART_WARNINGS[plan.part]}")
    temperature, record = fit_on(weights, plan, resolve_device(device))
    meta = dataclasses.replace(weights.meta, temperature=temperature, temperature_fit=record.as_meta())
    written = write_meta(weights_path, meta, out)
    replaced = weights.meta.temperature if weights.meta.calibrated else None
    result = Calibration(weights.meta.model, temperature, record, written, replaced)
    if result.at_edge:
        low, high = TEMPERATURE_RANGE
        say(f"T is at the edge of the allowed range [{low:g}, {high:g}]")
    return result
