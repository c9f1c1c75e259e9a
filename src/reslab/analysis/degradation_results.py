"""The degradation experiment's results.json as a type: `DegradationResults`, which degradation.py
fills and `--compare` (schedules.py) parses back.

A results.json given to --compare may come from anywhere (a copy in docs/results/, a colleague's
run), so every field that is read back is checked as it is parsed (reslab.records): counts are
capped, iterations and error fractions must lie in range, and a network's final error written as
NaN (no final number) reads as None, shown as n/a.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from reslab.analysis.runs import Curve
from reslab.expdir import Claim, ExperimentResults, RunResult, Settings
from reslab.records import RecordError, checked, optional, short

MAX_ITERATIONS = 10**8
MAX_MILESTONES = 16
MAX_NETWORKS = 64
MAX_POINTS = 100_000  # per curve


def _fraction(value: float | None) -> bool:
    """An error fraction: 0.0875 for 8.75% (an int of any size compares without overflow)."""
    return value is None or 0 <= value <= 1


def _nan_as_none(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def error_fraction(**kwargs: object) -> float | None:
    """A field holding an error fraction or None (NaN in the file: no final number)."""
    return checked(_fraction, "is not an error fraction between 0 and 1", read=_nan_as_none, **kwargs)


def _error_curve(curve: Curve, _: Mapping[str, object]) -> str | None:
    """A curve of error fractions at increasing iterations, at most MAX_POINTS of them."""
    steps, values = curve.steps, curve.values
    if len(steps) != len(values) or len(steps) > MAX_POINTS:
        return f"has {len(steps)} steps and {len(values)} values (equal, at most {MAX_POINTS:,})"
    if any(s < 0 for s in steps) or any(a >= b for a, b in zip(steps, steps[1:])):
        raise RecordError(".steps", "are not increasing iterations")
    if not all(0 <= v <= 1 for v in values):
        raise RecordError(".values", "are not error fractions between 0 and 1")
    return None


@dataclass(kw_only=True)
class CurvePair:
    """A network's mean training and test error curves (fractions against iterations)."""

    train: Curve = field(metadata={"check": _error_curve})
    test: Curve = field(metadata={"check": _error_curve})


@dataclass(kw_only=True)
class NetworkRow:
    """One network's final errors (mean and std over seeds) and parameters: the summary table."""

    model: str  # "plain-20", "ResNet-56"
    name: str = ""  # the registry's name (plain20)
    residual: bool = False
    depth: int = 0
    seeds: int = 0
    train_error_mean: float | None = error_fraction(default=None)
    train_error_std: float | None = None
    test_error_mean: float | None = error_fraction(default=None)
    test_error_std: float | None = None
    best_test_error_mean: float | None = None
    params: int | None = None


@dataclass(kw_only=True)
class FinalErrors:
    train: float | None = error_fraction(default=None)
    test: float | None = error_fraction(default=None)


@dataclass(kw_only=True)
class ComparedWith:
    """The --compare experiment this one was drawn beside."""

    source: str  # as given to --compare
    label: str  # "3 epochs, 1,404 iterations"
    iterations: int
    milestones: list[int]
    final: dict[str, FinalErrors]  # network -> its final errors


def _milestones(milestones: list[int], earlier: Mapping[str, object]) -> str | None:
    iterations = earlier["iterations"]
    if len(milestones) <= MAX_MILESTONES and all(0 < m <= iterations for m in milestones):
        return None
    return f"is not a list of at most {MAX_MILESTONES} iterations between 1 and {iterations}"


def _networks(curves: dict[str, CurvePair], earlier: Mapping[str, object]) -> str | None:
    if not curves or len(curves) > MAX_NETWORKS:
        return f"is not an object of 1 to {MAX_NETWORKS} networks"
    iterations = earlier["iterations"]
    for net, pair in curves.items():
        for kind, curve in (("train", pair.train), ("test", pair.test)):
            if curve.steps and curve.steps[-1] > iterations:
                raise RecordError(
                    f"[{short(net)}].{kind}.steps", f"are not increasing iterations within 0..{iterations}"
                )
    return None


@dataclass(kw_only=True)
class DegradationResults(ExperimentResults):
    """results.json of `reslab reproduce degradation`. Fields are read in this order, so a field's
    check may use those above it (the milestones and curves lie within the iterations)."""

    synthetic_data: bool = False
    data: str
    iterations: int = checked(lambda n: 0 < n <= MAX_ITERATIONS, f"is not an integer between 1 and {MAX_ITERATIONS:,}")
    milestones: list[int] = field(metadata={"check": _milestones})  # where the lr fell / 10
    eval_every: int = 0
    settings: Settings = field(default_factory=Settings)
    training_error_plotted: str = ""  # what the training error curves are
    curves: dict[str, CurvePair] = field(metadata={"check": _networks})  # network -> its mean curves
    table: list[NetworkRow] = checked(lambda rows: len(rows) <= MAX_NETWORKS, f"has over {MAX_NETWORKS} networks")
    claims: list[Claim] = field(default_factory=list)
    not_reproduced_reasons: list[str] = field(default_factory=list)
    compared_with: ComparedWith | None = optional()
    runs: list[RunResult] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
