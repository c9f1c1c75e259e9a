"""The evaluation report of weights (`reslab eval`): metrics.json, its figures and its text.

`evaluate_to_dir` is the whole use case: the run's own evaluation (reslab.evaluation.plan_evaluation)
with the caller's overrides, `evaluate_weights`, then into one folder
  metrics.json     `EvalReport`, the file's layout as a type: the settings evaluated, every metric
                   of reslab.evaluation.evaluate, the per-class lists keyed by class name
  confusion.png    the confusion matrix, each row normalised by its class's images
  reliability.png  the reliability diagram: accuracy against confidence per confidence bin,
                   of the logits and, with a temperature stored by `reslab calibrate`, of logits / T
and `EvalOutcome.lines()` is what `reslab eval` prints. matplotlib is imported by the figure
functions only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reslab.atomic import atomic_write_bytes
from reslab.device import resolve_device
from reslab.evaluation import EvalPlan, EvalRequest, evaluate_weights, plan_evaluation
from reslab.infer.calibrate import fit_source
from reslab.rundir import RunDir
from reslab.weights import WeightsMeta, load_weights, resolve_weights

if TYPE_CHECKING:  # matplotlib is imported by the figure functions only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

METRICS_FILE, CONFUSION_FILE, RELIABILITY_FILE = "metrics.json", "confusion.png", "reliability.png"
PER_CLASS = ("per_class_accuracy", "per_class_recall", "per_class_precision", "per_class_f1", "per_class_support")
MAX_TABLE_CLASSES = 30  # the per-class table is printed up to this many classes (all are in metrics.json)
MAX_TICK_CLASSES, MAX_COUNT_CLASSES = 40, 20  # the confusion figure names classes, and writes counts, up to these


@dataclass(frozen=True)
class Reliability:
    """Per equal-width confidence bin: its images, their mean confidence and accuracy (0: empty bin)."""

    bins: int
    images: list[int]
    confidence: list[float]
    accuracy: list[float]


@dataclass(frozen=True)
class Calibrated:
    """The calibration of logits / T, T stored by `reslab calibrate` (metrics.json "calibrated")."""

    temperature: float
    ece: float
    nll: float
    brier: float
    reliability: Reliability


@dataclass(frozen=True)
class EvalReport:
    """metrics.json: what was evaluated, then reslab.evaluation.evaluate's metrics in its order, the
    per-class lists as {class name: value}. Errors, accuracies, ECE are fractions; loss and NLL nats."""

    weights: str  # the weights file evaluated
    model: str
    dataset: str
    part: str  # "test", "val" or "train"
    crops: int  # 1, or 10 for the paper's 10-crop testing
    scales: list[int] | None  # shorter sides of multi-scale testing, None for one centre crop
    tta: str  # "flip" or "none"
    precision: str
    top1_error: float
    top5_error: float
    accuracy: float
    loss: float
    images: int
    seconds: float
    per_class_accuracy: dict[str, float]  # the same as per_class_recall, under its older name
    balanced_accuracy: float
    macro_f1: float
    per_class_recall: dict[str, float]
    per_class_precision: dict[str, float]
    per_class_f1: dict[str, float]
    per_class_support: dict[str, int]
    confusion: list[list[int]]  # rows = truth, columns = prediction, in class order
    ece: float
    nll: float
    brier: float
    reliability: Reliability
    calibrated: Calibrated | None = None  # only with a temperature stored in the weights

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], weights: Path, meta: WeightsMeta, plan: EvalPlan) -> EvalReport:
        """The report of `evaluate_weights`' metrics for `weights` evaluated as `plan` says."""
        m = dict(metrics)
        for key in PER_CLASS:
            m[key] = dict(zip(meta.class_names, m[key]))
        m["reliability"] = Reliability(**m["reliability"])
        if "calibrated" in m:
            calibrated = dict(m["calibrated"])
            m["calibrated"] = Calibrated(**{**calibrated, "reliability": Reliability(**calibrated["reliability"])})
        return cls(
            weights=str(weights),
            model=meta.model,
            dataset=plan.source.dataset,
            part=plan.part,
            crops=10 if plan.eval_mode == "ten-crop" else 1,
            scales=list(plan.scales) if plan.scales else None,
            tta="flip" if plan.tta_flip else "none",
            precision=plan.precision,
            **m,
        )

    @property
    def classes(self) -> list[str]:
        return list(self.per_class_support)

    def to_json(self) -> dict[str, object]:
        """The JSON object of metrics.json ("calibrated" only when there is a temperature)."""
        values = dataclasses.asdict(self)
        if self.calibrated is None:
            del values["calibrated"]
        return values

    def write(self, out_dir: Path) -> None:
        """metrics.json, confusion.png and reliability.png into `out_dir` (created), each atomically."""
        out_dir.mkdir(parents=True, exist_ok=True)
        save_confusion_png(self, out_dir / CONFUSION_FILE)
        save_reliability_png(self, out_dir / RELIABILITY_FILE)
        atomic_write_bytes(out_dir / METRICS_FILE, json.dumps(self.to_json(), indent=2).encode())


# ---- figures --------------------------------------------------------------------------------------


def _axes(size: tuple[float, float]) -> tuple[Figure, Axes]:
    """(figure, axes) from pyplot on the Agg backend, which reslab.analysis.figures chooses."""
    from reslab.analysis.figures import plt

    return plt.subplots(figsize=size)


def save_confusion_png(report: EvalReport, path: Path) -> None:
    """The confusion matrix, each row divided by its class's images; class names on the axes up to
    MAX_TICK_CLASSES classes, the counts in the cells up to MAX_COUNT_CLASSES."""
    from reslab.analysis.figures import _save

    matrix = torch.tensor(report.confusion, dtype=torch.float64)
    normalised = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    classes, n = report.classes, len(report.classes)
    size = min(4 + 0.45 * n, 30)
    fig, ax = _axes((size, size))
    ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= MAX_TICK_CLASSES:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
    if n <= MAX_COUNT_CLASSES:
        for i, j in matrix.nonzero().tolist():
            color = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report.model} on {report.dataset}: top-1 error {100 * report.top1_error:.2f}%")
    _save(fig, path)


def save_reliability_png(report: EvalReport, path: Path) -> None:
    """Reliability diagram: per confidence bin, accuracy against mean confidence (the diagonal is
    perfect calibration); the calibrated curve too when the report has one."""
    from reslab.analysis.figures import _save

    curves: list[tuple[str, float, Reliability, str]] = [
        ("softmax of the logits", report.ece, report.reliability, "tab:blue")
    ]
    if report.calibrated is not None:
        c = report.calibrated
        curves.append((f"logits / T (T = {c.temperature:.3g})", c.ece, c.reliability, "tab:orange"))
    fig, ax = _axes((5.5, 5.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    for i, (label, ece, r, color) in enumerate(curves):
        filled = [b for b, n in enumerate(r.images) if n]
        if i == 0:  # bars of the first curve's bins: accuracy per equal-width bin
            centres = [(b + 0.5) / r.bins for b in filled]
            heights = [r.accuracy[b] for b in filled]
            ax.bar(centres, heights, width=1 / r.bins, color=color, alpha=0.25, edgecolor=color)
        x, y = [r.confidence[b] for b in filled], [r.accuracy[b] for b in filled]
        ax.plot(x, y, "o-", color=color, markersize=4, label=f"{label}: ECE {100 * ece:.2f}%")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"confidence (top-1 probability; {report.reliability.bins} bins)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{report.model} on {report.dataset} ({report.part} part)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


# ---- text -----------------------------------------------------------------------------------------


def calibration_lines(report: EvalReport, meta: WeightsMeta) -> list[str]:
    """What `reslab eval` prints about calibration: the logits' metrics, then the calibrated ones."""
    r = report
    lines = [
        f"  calibration ECE {100 * r.ece:.2f}%   NLL {r.nll:.4f}   Brier {r.brier:.4f}   "
        f"(softmax of the logits; ECE over {r.reliability.bins} confidence bins, Brier summed over classes)"
    ]
    if r.calibrated is not None:
        c = r.calibrated
        lines.append(
            f"  calibrated  ECE {100 * c.ece:.2f}%   NLL {c.nll:.4f}   Brier {c.brier:.4f}   "
            f"(logits / T, T = {c.temperature:.4g} stored by `reslab calibrate`{fit_source(meta.temperature_fit)})"
        )
    return lines


def per_class_table(report: EvalReport) -> str:
    """Recall, precision, F1 (percent) and support (images) per class, as printed by `reslab eval`."""
    width = max(len("class"), *(len(c) for c in report.classes))
    lines = [f"  {'class':<{width}}  {'recall':>7}  {'precision':>9}  {'F1':>7}  {'images':>7}"]
    for c in report.classes:
        recall, precision, f1 = (
            100 * d[c] for d in (report.per_class_recall, report.per_class_precision, report.per_class_f1)
        )
        lines.append(f"  {c:<{width}}  {recall:6.2f}%  {precision:8.2f}%  {f1:6.2f}%  {report.per_class_support[c]:>7}")
    return "\n".join(lines)


# ---- the use case ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalOutcome:
    """What `evaluate_to_dir` did: the report, where it went, and the plan and weights it evaluated."""

    report: EvalReport
    out_dir: Path
    plan: EvalPlan
    meta: WeightsMeta

    def lines(self) -> list[str]:
        """The summary `reslab eval` prints (the per-class table up to MAX_TABLE_CLASSES classes)."""
        r = self.report
        lines = [
            f"{r.model} on {r.dataset} ({r.images} images, {self.plan.describe()})",
            f"  top-1 error {100 * r.top1_error:6.2f}%   (accuracy {100 * r.accuracy:.2f}%, "
            f"balanced accuracy {100 * r.balanced_accuracy:.2f}%, macro-F1 {100 * r.macro_f1:.2f}%)",
            f"  top-5 error {100 * r.top5_error:6.2f}%",
            f"  loss        {r.loss:.4f}",
            *calibration_lines(r, self.meta),
        ]
        if len(r.classes) <= MAX_TABLE_CLASSES:
            lines.append(per_class_table(r))
        return lines

    def files_line(self) -> str:
        """Where the figures and the metrics are."""
        return (
            f"  confusion matrix: {self.out_dir / CONFUSION_FILE}; reliability diagram: "
            f"{self.out_dir / RELIABILITY_FILE}; all metrics: {self.out_dir / METRICS_FILE}"
        )


def default_out_dir(source: str, weights_path: Path, run_dir: RunDir | None, dataset: str) -> Path:
    """RUN/eval-DATASET for a run; ./eval-STEM-DATASET for a weights file or a shipped name (never
    beside a file that may sit in the installed package); ./eval-NAME-DATASET for hf-hub:USER/NAME."""
    if run_dir is not None:
        return run_dir.eval_dir(dataset)
    if source.startswith("hf-hub:"):  # the cached file is always weights.safetensors: name the repository
        return Path(f"eval-{source.partition('@')[0].rsplit('/', 1)[-1]}-{dataset}")
    return Path(f"eval-{weights_path.stem}-{dataset}")


def evaluate_to_dir(
    source: str, overrides: EvalRequest, device: str = "auto", out: str | Path | None = None
) -> EvalOutcome:
    """Evaluate the weights `source` (run directory, weights file, shipped name, hf-hub:USER/NAME) as
    the run evaluated itself, with `overrides`, and write the report into `out` (default
    `default_out_dir`). A run's own settings come from its config.yaml, a file's from its metadata."""
    torch_device = resolve_device(device)
    weights_path = resolve_weights(source)
    run = RunDir(source) if Path(source).is_dir() else None
    weights = load_weights(weights_path)
    plan = plan_evaluation(weights, run, overrides)
    metrics = evaluate_weights(weights, plan, torch_device)
    report = EvalReport.from_metrics(metrics, weights_path, weights.meta, plan)
    out_dir = Path(out) if out else default_out_dir(source, weights_path, run, plan.source.dataset)
    report.write(out_dir)
    return EvalOutcome(report, out_dir, plan, weights.meta)
