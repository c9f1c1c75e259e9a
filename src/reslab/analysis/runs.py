"""Reading finished (or half-finished) training runs: config, metrics curves, summary.

A run directory (`reslab.rundir.RunDir`) is what training writes; the analysis adds
train_error.json (the training-set error curve evaluated from checkpoints, see `train_error.py`)
and a per-run report. Files are named by `RunDir` only.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reslab.errors import DataError
from reslab.expdir import ExperimentDir
from reslab.records import load_record
from reslab.rundir import MetricsRecord, RunDir, RunSummary


@dataclass
class Curve:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # fractions (0.07 = 7%)

    def __bool__(self) -> bool:
        return bool(self.steps)

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None


@dataclass(kw_only=True)
class TrainErrorCurve:
    """train_error.json: a run's training-set error evaluated from its checkpoints (train_error.py)."""

    images: int  # training images evaluated at each step
    steps: list[int]
    train_top1_error: list[float]  # fractions, one per step
    what: str = ""  # how it was measured, in words

    @classmethod
    def read(cls, run: RunDir) -> TrainErrorCurve | None:
        """The run's train_error.json, or None; a damaged one is a DataError naming it."""
        hint = "delete it (the report then plots the running training error)"
        return load_record(cls, run.train_error, DataError, hint)


@dataclass
class Run:
    """One training run, read back from its directory."""

    path: Path
    config: dict[str, Any]  # config.yaml as written (the report shows its sections)
    metrics: list[MetricsRecord]  # metrics.jsonl's records by step
    summary: RunSummary | None  # None while the run is not finished

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def seed(self) -> int:
        return int(self.config["train"]["seed"])

    @property
    def dataset(self) -> str:
        return self.config["data"]["dataset"]

    @property
    def lr_drops(self) -> list[int]:
        """Iterations at which a multistep schedule divided the learning rate (within the run)."""
        schedule = self.config.get("schedule") or {}
        if schedule.get("name") != "multistep":
            return []
        last = (self.summary.steps if self.summary else 0) or (self.metrics[-1]["step"] if self.metrics else 0)
        return [m for m in schedule.get("milestones", []) if isinstance(m, int) and 0 < m <= last]

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def synthetic(self) -> bool:
        if self.summary is not None:
            return self.summary.synthetic_data
        return self.dataset == "synthetic"

    @property
    def final(self) -> MetricsRecord:
        """The last evaluation: summary.json's, else (unfinished) the last record of metrics.jsonl."""
        return (self.summary.final if self.summary else None) or (self.metrics[-1] if self.metrics else {})

    def curve(self, key: str) -> Curve:
        """(steps, values) of a metrics.jsonl key, e.g. "test_top1_error" or "train_error"."""
        points = [(r["step"], r[key]) for r in self.metrics if isinstance(r.get(key), (int, float))]
        return Curve([s for s, _ in points], [v for _, v in points])

    def train_error_curve(self) -> tuple[Curve, str]:
        """The training error curve and what it is: the training-set error evaluated from
        checkpoints (train_error.json) when present, else the running error of each epoch."""
        saved = TrainErrorCurve.read(self.dir)
        if saved is not None:
            return Curve(saved.steps, saved.train_top1_error), (
                f"top-1 error on {saved.images} fixed training images, eval mode, no augmentation"
            )
        return self.curve("train_error"), "running error over each epoch's augmented mini-batches (train mode)"


def load_run(path: str | Path) -> Run:
    """Read a run directory; a DataError says what is missing."""
    path = Path(path)
    run = RunDir(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such run directory")
    if not run.config.is_file():
        hint = (
            " (an experiment directory: pass its runs/*, or the directory itself to `reslab report`)"
            if ExperimentDir(path).holds_experiment()
            else ""
        )
        raise DataError(f"{path} is not a reslab run directory: it has no {run.config.name}{hint}")
    return Run(path, run.read_config(), run.read_metrics(), run.read_summary())


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    if not values:
        return float("nan"), None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pct(value: float | None, std: float | None = None, digits: int = 2) -> str:
    """0.0875 -> '8.75'; with a std: '8.75 +- 0.16'."""
    if value is None or value != value:
        return "n/a"
    text = f"{100 * value:.{digits}f}"
    return text if std is None else f"{text} \u00b1 {100 * std:.{digits}f}"


def mean_curve(curves: list[Curve]) -> Curve:
    """Pointwise mean over seeds, on the steps all of them have."""
    curves = [c for c in curves if c]
    if not curves:
        return Curve()
    common = sorted(set.intersection(*(set(c.steps) for c in curves)))
    lookup = [dict(zip(c.steps, c.values)) for c in curves]
    return Curve(common, [statistics.fmean(d[s] for d in lookup) for s in common])
