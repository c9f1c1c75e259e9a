"""`reslab reproduce EXPERIMENT --budget 30m`: one wall time for a whole experiment, shared by its runs.

The runs of a training experiment are compared at the same iterations (the paper's curves), so a
budget cannot give each run its own length as `reslab train --budget` does. Instead the experiment
measures each network's work once, here, as a budgeted run measures itself (training steps on its
data and batch with the threads each run will have, an evaluation, a checkpoint write), then
chooses ONE length for every run, the number of curve points and the images each point uses so
that the whole experiment, its evaluations, the degradation experiment's training-error curve and
the report included, ends within the budget. The last evaluation of every run uses the whole test
set; so do the tables. The decision is recorded in experiment.json (`BudgetDecision`): a later
invocation trains and resumes the runs with the same numbers and measures nothing.

    time since start + makespan of the runs over --parallel slots + training-error curves + report
        <= budget x (1 - MARGIN)

Curve points first lose images (down to MIN_EVAL_IMAGES of each part), then points (down to
MIN_POINTS), until they take at most EVAL_SHARE of the training steps' time.
"""

from __future__ import annotations

import heapq
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from reslab.config import BUDGET_EVAL_SHARE, BUDGET_MARGIN, budget_seconds, load_config
from reslab.errors import ConfigError
from reslab.expdir import BudgetDecision
from reslab.machine import command_seconds

MARGIN, EVAL_SHARE = BUDGET_MARGIN, BUDGET_EVAL_SHARE  # (reslab.config) as `reslab train --budget`
MAX_POINTS, MIN_POINTS = 32, 8  # curve points per run (the paper's 64k iterations: one every 2,000)
MIN_EVAL_IMAGES = 1_000  # images of each part a curve point uses, at least (fewer: too noisy a curve)
MIN_ITERATIONS = 100  # a shorter run shows nothing of the paper's curves
MEASURE_S = 60.0  # each network's steps are timed for MEASURE_SHARE (reslab.train.budget) of this
REPORT_S = 5.0  # figures, tables, the report page


@dataclass(frozen=True)
class NetCost:
    """One network's runs: the work of each, measured here (reslab.train.loop.RunCost)."""

    model: str
    runs: int  # seeds
    step_s: float
    part_s: dict[str, float]  # seconds of one evaluation of each whole part
    part_images: dict[str, int]
    save_s: float
    start_s: float  # a run's start: the interpreter, imports, reading the data
    steps_per_epoch: int = 0  # a checkpoint is also written at each epoch end (0: not counted)

    def point_s(self, images: int) -> float:
        """One curve point of `images` images of each part."""
        return sum(s * min(1.0, images / self.part_images[p]) for p, s in self.part_s.items())

    def image_s(self) -> float:
        """Seconds per evaluated image (the training-error curve evaluates training images alike)."""
        return sum(self.part_s.values()) / max(1, sum(self.part_images.values()))


@dataclass(frozen=True)
class Choice:
    iterations: int
    points: int  # evaluations of each run (the curve points, the last one included)
    eval_every: int  # iterations between them
    images: int  # of each part per curve point
    every_image: bool  # `images` covers the largest part: no subset
    train_images: int  # of the training-error curve (0: none)
    seconds: float  # the whole experiment's wall time, predicted


def makespan(seconds: list[float], slots: int) -> float:
    """Wall time of jobs run `slots` at a time, longest first (as `train_runs` starts them)."""
    ends = [0.0] * max(1, slots)
    for s in sorted(seconds, reverse=True):
        heapq.heappush(ends, heapq.heappop(ends) + s)
    return max(ends)


def _points_and_images(iterations: int, nets: list[NetCost], full: int) -> tuple[int, int]:
    """Curve points and images per point for runs of `iterations`: as many as fit EVAL_SHARE."""
    train_s = sum(n.runs * iterations * n.step_s for n in nets)
    allowed = EVAL_SHARE * train_s
    points = min(MAX_POINTS, iterations)

    def cost(p: int, m: int) -> float:
        return sum(n.runs * p * n.point_s(m) for n in nets)

    images = full
    if cost(points, images) > allowed:
        per_image = cost(points, full) / full
        images = max(MIN_EVAL_IMAGES, min(full, int(allowed / per_image) // 100 * 100))
    if cost(points, images) > allowed:
        points = max(MIN_POINTS, min(points, math.floor(allowed / max(cost(1, images), 1e-9))))
    return points, images


def predict(iterations: int, nets: list[NetCost], slots: int, train_images: int, spent_s: float) -> Choice:
    """The experiment's wall time with runs of `iterations` (and the points and images that go with it)."""
    full = _largest_part(nets)
    points, images = _points_and_images(iterations, nets, full)
    curve_images = min(train_images, images) if train_images else 0
    every = max(1, round(iterations / points))
    evaluations = iterations // every + (1 if iterations % every else 0)
    runs, curves = [], 0.0
    for n in nets:
        # A checkpoint at each curve point and each epoch end; the training-error curve reads them all.
        epochs = math.ceil(iterations / n.steps_per_epoch) if n.steps_per_epoch else 0
        checkpoints = evaluations + epochs
        one = (
            n.start_s
            + iterations * n.step_s
            + (evaluations - 1) * n.point_s(images)
            + sum(n.part_s.values())  # the last evaluation: every image
            + checkpoints * n.save_s
        )
        runs += [one] * n.runs  # measured with the threads each run has (1/K of the cores under --parallel K)
        curves += n.runs * checkpoints * curve_images * n.image_s()  # here, after training
    seconds = spent_s + makespan(runs, slots) + curves + REPORT_S
    return Choice(iterations, evaluations, every, images, images >= full, curve_images, seconds)


def _largest_part(nets: list[NetCost]) -> int:
    return max(max(n.part_images.values()) for n in nets)


def choose(budget_s: float, nets: list[NetCost], slots: int, train_images: int, spent_s: float) -> Choice:
    """The most iterations whose experiment ends within the budget; a ConfigError naming the
    smallest budget that works when not even MIN_ITERATIONS fit."""
    available = budget_s * (1 - MARGIN)
    slowest = max(n.step_s for n in nets)
    lowest, highest = 0, max(0, math.floor(available / slowest))
    while lowest < highest:
        middle = (lowest + highest + 1) // 2
        if predict(middle, nets, slots, train_images, spent_s).seconds <= available:
            lowest = middle
        else:
            highest = middle - 1
    if lowest < MIN_ITERATIONS:
        smallest = predict(MIN_ITERATIONS, nets, slots, train_images, spent_s).seconds / (1 - MARGIN)
        raise ConfigError(
            f"--budget is too short for {MIN_ITERATIONS} iterations of every run here ({spent_s:.0f} s spent "
            f"measuring, the slowest network {slowest:.3g} s per step): the smallest budget that works is "
            f"{math.ceil(smallest)}s"
        )
    return predict(lowest, nets, slots, train_images, spent_s)


def measure_nets(
    measure: Callable[..., Any], recipe: str, overrides: list[str], models: dict[str, int], threads: int
) -> list[NetCost]:
    """Each network's work (`measure` is reslab.train.loop.measure), with the threads a run will
    have; a run's start is taken to cost what this command's own start did (the interpreter,
    imports, the data's check)."""
    before, start_s = torch.get_num_threads(), command_seconds(time.monotonic())
    nets = []
    try:
        torch.set_num_threads(threads)
        for model, runs in models.items():
            print(f"budget: measuring {model} ({threads} thread{'s' if threads > 1 else ''})", file=sys.stderr)
            cost = measure(load_config(recipe, [*overrides, f"model.name={model}"]), MEASURE_S)
            s = cost.speed
            nets.append(
                NetCost(model, runs, s.step_s, s.parts, cost.part_images, s.save_s, start_s, cost.steps_per_epoch)
            )
    finally:
        torch.set_num_threads(before)
    return nets


def decide(budget: str, nets: list[NetCost], slots: int, train_images: int) -> tuple[BudgetDecision, Choice]:
    """The budget's decision for runs of `nets` trained `slots` at a time, counting the time this
    command has taken so far (`reslab.machine.command_seconds`)."""
    choice = choose(budget_seconds(budget), nets, slots, train_images, command_seconds(time.monotonic()))
    runs = sum(n.runs for n in nets)
    line = (
        f"budget {budget}: {runs} run{'s' if runs != 1 else ''} of {choice.iterations:,} iterations, "
        f"{choice.points} curve points on "
        + ("every image" if choice.every_image else f"{choice.images:,} images of each part (the last on all)")
        + (f", training-error curve on {choice.train_images:,} images" if choice.train_images else "")
        + f"; {choice.seconds / 60:.1f} min predicted"
    )
    decision = BudgetDecision(
        budget=budget,
        iterations=choice.iterations,
        eval_every=choice.eval_every,
        eval_images=0 if choice.every_image else choice.images,
        train_images=choice.train_images,
        line=line,
    )
    return decision, choice
