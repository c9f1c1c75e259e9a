"""Time budgets (train.budget, `reslab train --budget 10m`): a run that ends within a wall-clock time.

At the start of a new budgeted run the trainer measures the run's own work (`measure_speed`): real
training steps of this model, data path, precision and batch on a throwaway copy of the network,
and the first batches of an evaluation of every evaluated part, extrapolated to the whole part.
The RNG states are put back afterwards, so the run itself is what it would be without measuring.
`plan_budget` (a pure function) then chooses the steps, and if evaluations would eat more than
`EVAL_SHARE` of the training time, fewer of them, so that

    time since the process started + steps x step time + evaluations x evaluation time + end
        <= budget x (1 - MARGIN)

`apply_budget` writes the decision into the config (train.iterations, train.budget_steps,
train.eval_every; the schedule's step-based settings scaled to the new length), which config.yaml
records: a resumed run, `reslab eval` and every torchrun rank read the steps from there, and
nothing is measured again.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reslab.checkpoint import rng_states, set_rng_states
from reslab.config import BUDGET_EVAL_SHARE, BUDGET_MARGIN, Config, budget_seconds
from reslab.errors import ConfigError
from reslab.evaluation import evaluate
from reslab.train.build import Data
from reslab.train.distributed import Dist, on_rank0
from reslab.train.state import TrainingState

MARGIN, EVAL_SHARE = BUDGET_MARGIN, BUDGET_EVAL_SHARE  # (reslab.config) beyond EVAL_SHARE, fewer evaluations
END_S = 1.0  # seconds for the end of a run besides its last evaluation (weights, summary, calibration)
MEASURE_SHARE = 0.03  # of the budget spent measuring training steps (at least MIN_TIMED_STEPS of them)
MIN_TIMED_STEPS, MAX_TIMED_STEPS, WARMUP_STEPS = 10, 400, 3
EVAL_TIMED_BATCHES = 3  # evaluation batches timed per part (after one untimed)
EVAL_OVERHEAD_S = 0.01  # per part and evaluation: its metrics, log line, metrics.jsonl and TensorBoard records


@dataclass(frozen=True)
class Speed:
    """The run's own work, measured at its start."""

    step_s: float  # seconds per optimizer step, batch fetch included (median of the timed steps)
    eval_s: float  # seconds per evaluation of every evaluated part, its record and log line included
    save_s: float = 0.0  # seconds per checkpoint (written at each epoch end and every checkpoint_every steps)
    epoch_s: float = 0.0  # seconds to start an epoch (streamed data: the loader's workers) beyond a step
    end_s: float = END_S  # seconds after the last evaluation: the checks on val (reslab.train.finish), writes
    steps_timed: int = 0
    parts: dict[str, float] = field(default_factory=dict)  # seconds of one evaluation of each whole part

    def seconds(self, steps: int, steps_per_epoch: int, eval_every: int, checkpoint_every: int = 0) -> float:
        """Wall seconds of a run of `steps` from its first step to its end."""
        epochs = math.ceil(steps / steps_per_epoch)
        saves = epochs + (steps // checkpoint_every if checkpoint_every else 0)
        return (
            steps * self.step_s
            + evaluations_of(steps, steps_per_epoch, eval_every) * self.eval_s
            + saves * self.save_s
            + epochs * self.epoch_s
            + self.end_s
        )


@dataclass(frozen=True)
class BudgetPlan:
    """What a budget came to: the steps, how often to evaluate, and what that rests on."""

    budget: str  # as the user wrote it ("10m")
    steps: int
    eval_every: int  # train.eval_every for the run (0: each epoch end, N: every N steps, -1: at the end)
    evaluations: int
    epochs: float
    img_per_s: float  # training images per second measured (all processes)
    speed: Speed

    def line(self) -> str:
        """What the run says it decided: 'budget 10m: 3,120 steps = 22.4 epochs at 690 img/s
        measured, 9 evaluations (4.1 s each)'."""
        return (
            f"budget {self.budget}: {self.steps:,} steps = {self.epochs:.1f} epochs at {self.img_per_s:,.0f} img/s "
            f"measured, {self.evaluations} evaluation{'s' if self.evaluations != 1 else ''} "
            f"({self.speed.eval_s:.2g} s each)"
        )


def evaluations_of(steps: int, steps_per_epoch: int, eval_every: int) -> int:
    """Evaluations a run of `steps` makes (the trainer's rule): every `eval_every` steps, each
    epoch end (0) or only after the last step (-1), and one at the end when the last step falls
    between two of them."""
    if eval_every < 0:
        return 1
    every = eval_every or steps_per_epoch
    return steps // every + (1 if steps % every else 0)


def _every_for(steps: int, speed: Speed, steps_per_epoch: int, eval_every: int) -> int:
    """The run's own eval_every, or a wider one when its evaluations would take more than
    EVAL_SHARE of the steps' time (at least one evaluation, the final one)."""
    if eval_every < 0 or steps == 0:
        return eval_every
    wanted = evaluations_of(steps, steps_per_epoch, eval_every)
    allowed = max(1, math.floor(EVAL_SHARE * steps * speed.step_s / max(speed.eval_s, 1e-9)))
    if wanted <= allowed:
        return eval_every
    if allowed == 1:
        return -1
    every = math.ceil(steps / allowed)
    if eval_every == 0:  # evaluations at epoch ends stay there: every k-th epoch end
        every = math.ceil(every / steps_per_epoch) * steps_per_epoch
    return every


def _seconds(steps: int, speed: Speed, steps_per_epoch: int, cfg: Config) -> float:
    every = _every_for(steps, speed, steps_per_epoch, cfg.train.eval_every)
    return speed.seconds(steps, steps_per_epoch, every, cfg.train.checkpoint_every)


def plan_budget(cfg: Config, speed: Speed, steps_per_epoch: int, spent_s: float) -> BudgetPlan:
    """The most steps that end the run within cfg.train.budget, `spent_s` seconds after the process
    started; a ConfigError naming the smallest budget that works when not even one epoch and one
    evaluation fit."""
    budget = budget_seconds(cfg.train.budget)
    available = budget * (1 - MARGIN) - spent_s
    lowest, highest = 0, max(0, math.floor(available / speed.step_s))
    while lowest < highest:  # the time is monotonic in the steps: binary search for the last that fits
        middle = (lowest + highest + 1) // 2
        if _seconds(middle, speed, steps_per_epoch, cfg) <= available:
            lowest = middle
        else:
            highest = middle - 1
    if lowest < steps_per_epoch:
        smallest = (spent_s + speed.seconds(steps_per_epoch, steps_per_epoch, -1)) / (1 - MARGIN)
        raise ConfigError(
            f"train.budget={cfg.train.budget} is too short for one epoch and one evaluation here "
            f"({spent_s:.0f} s set-up, an epoch of {steps_per_epoch} steps x {speed.step_s:.3g} s, an evaluation "
            f"{speed.eval_s:.1f} s): the smallest budget that works is {math.ceil(smallest)}s"
        )
    every = _every_for(lowest, speed, steps_per_epoch, cfg.train.eval_every)
    return BudgetPlan(
        budget=cfg.train.budget,
        steps=lowest,
        eval_every=every,
        evaluations=evaluations_of(lowest, steps_per_epoch, every),
        epochs=lowest / steps_per_epoch,
        img_per_s=cfg.train.batch_size / speed.step_s,
        speed=speed,
    )


def apply_budget(cfg: Config, plan: BudgetPlan, steps_per_epoch: int) -> None:
    """Write the budget's decision into `cfg` (then config.yaml): the steps, the evaluation interval,
    and the schedule's step-based settings scaled from the recipe's own length to the new one."""
    t, s = cfg.train, cfg.schedule
    before = t.iterations or (math.ceil(t.epochs * steps_per_epoch) if t.epochs > 0 else 0)
    if before > 0:
        s.milestones = [max(1, round(m * plan.steps / before)) for m in s.milestones]
        s.warmup_steps = round(s.warmup_steps * plan.steps / before) if s.warmup_steps else 0
        s.warmup_epochs = s.warmup_epochs * plan.steps / before
        s.step_size = max(1, round(s.step_size * plan.steps / before))
    t.iterations, t.epochs, t.budget_steps, t.eval_every = plan.steps, 0.0, plan.steps, plan.eval_every


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    """Every RNG (Python, NumPy, torch, CUDA) as it was before the block."""
    states = rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(
    step: Callable[[tuple[torch.Tensor, torch.Tensor]], object],
    data: Data,
    device: torch.device,
    budget_s: float,
    *,
    fixed: bool = False,
) -> tuple[float, int]:
    """(seconds per step, steps timed): `step` run on the training batches (fetching a batch
    counts) until MEASURE_SHARE of the budget is spent (at least MIN_TIMED_STEPS, at most
    MAX_TIMED_STEPS); the first quarter (at least WARMUP_STEPS) is dropped, since a CPU's first
    steps run slower (allocations, caches, the thread pool), and the mean of the rest is the step
    time (the run's time is a sum of steps, so the mean, not the median). `fixed`: exactly
    2 x MIN_TIMED_STEPS, as under torchrun, where every process must take the same steps."""
    batches = itertools.chain.from_iterable(data.train.epoch(e) for e in itertools.count())
    times: list[float] = []
    last = time.perf_counter()
    for batch in batches:
        step(batch)
        _sync(device)
        now = time.perf_counter()
        times.append(now - last)
        last = now
        if _enough(times, budget_s, fixed):
            break
    kept = times[max(WARMUP_STEPS, len(times) // 4) :]
    return statistics.fmean(kept), len(kept)


def _enough(times: list[float], budget_s: float, fixed: bool) -> bool:
    if fixed:
        return len(times) >= 2 * MIN_TIMED_STEPS + WARMUP_STEPS
    return len(times) >= MAX_TIMED_STEPS or (
        len(times) >= MIN_TIMED_STEPS + WARMUP_STEPS and sum(times) >= MEASURE_SHARE * budget_s
    )


def eval_seconds(
    model: nn.Module, data: Data, device: torch.device, precision: str, tta_flip: bool
) -> dict[str, float]:
    """Seconds of one evaluation of each part: its first batches timed (after one untimed) and scaled
    to its number of batches; a part of one or two batches timed whole."""
    seconds = {}
    options = dict(device=device, precision=precision, tta_flip=tta_flip)
    for part, batches in data.evals.items():
        n, run = len(batches), batches.epoch(0)
        if n > 2:
            evaluate(model, itertools.islice(run, 1), len(data.classes), **options)  # untimed: first-call costs
        timed = min(EVAL_TIMED_BATCHES, n - 1) if n > 2 else n
        start = time.perf_counter()
        evaluate(model, itertools.islice(run, timed), len(data.classes), **options)
        _sync(device)
        seconds[part] = (time.perf_counter() - start) / max(timed, 1) * n + EVAL_OVERHEAD_S
    return seconds


def epoch_start_seconds(data: Data, step_s: float) -> float:
    """Seconds to start a fresh epoch and fetch its first batch, beyond what a step's fetch costs
    (streamed data starts its loader's workers here; in memory this is about nothing)."""
    start = time.perf_counter()
    next(iter(data.train.epoch(1)), None)
    return max(0.0, time.perf_counter() - start - 0.1 * step_s)


def save_seconds(state: dict[str, object], folder: Path) -> float:
    """Seconds to write a checkpoint of `state` (a `TrainingState.state_dict()`) as a run does:
    serialised, written to a temp file in the run's folder and fsynced (then removed)."""
    import io

    from reslab.atomic import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".budget-probe.tmp"
    start = time.perf_counter()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(probe, b"0" * 65)  # the checksum file, written first
    atomic_write_bytes(probe, buffer.getvalue())
    seconds = time.perf_counter() - start
    probe.unlink(missing_ok=True)
    return seconds


@dataclass(frozen=True)
class Measuring:
    """What the measurement needs to know of the run."""

    cfg: Config
    device: torch.device
    dist: Dist
    precision: str
    watch: str | None  # the part evaluations watch (RunPlan.watch)
    run_dir: Path  # where the checkpoint probe is written (and removed)
    budget_s: float  # the budget the steps are timed for (MEASURE_SHARE of it)
    during: dict[str, float] = field(default_factory=dict)  # part -> share of it evaluated mid-run (eval_images)


def measure_speed(
    step: Callable[[tuple[torch.Tensor, torch.Tensor]], object], probe: TrainingState, data: Data, m: Measuring
) -> Speed:
    """The run's work on `probe` (a throwaway `TrainingState` of the run's kind; `step` one training
    step of it): steps timed in two windows, before and after the evaluations are timed, and the
    slower taken (a shared CPU's speed wanders over tens of seconds: a budget is better kept than
    missed); evaluations of the parts, a checkpoint, an epoch's start. Under torchrun the steps run
    on every process, the rest on rank 0."""
    cfg = m.cfg
    budget, fixed = m.budget_s, m.dist.world_size > 1
    first, timed = step_seconds(step, data, m.device, budget / 2, fixed=fixed)
    part_s, save_s = on_rank0(
        m.dist,
        lambda: (
            eval_seconds(probe.eval_model, data, m.device, m.precision, cfg.train.tta_flip),
            save_seconds(probe.state_dict(), m.run_dir),
        ),
    )
    second, more = step_seconds(step, data, m.device, budget / 2, fixed=fixed)
    step_s = max(first, second)
    # An evaluation during training covers the evaluated parts (train.eval_parts); the others are
    # evaluated once at the end, and the end-of-run checks on val (calibration, flip TTA) cost about
    # one more evaluation of val.
    during = list(part_s) if cfg.train.eval_parts == "all" or not m.watch else [m.watch]
    checks = "val" in part_s and (cfg.train.calibrate or (cfg.train.decide_tta and cfg.train.tta_flip))
    # The last evaluation covers every image (train.eval_images): what a mid-run one leaves out.
    rest = sum(t * (1.0 - m.during.get(p, 1.0)) if p in during else t for p, t in part_s.items())
    end_s = END_S + rest + (part_s["val"] if checks else 0.0)
    return Speed(
        step_s=step_s,
        eval_s=sum(part_s[p] * m.during.get(p, 1.0) for p in during),
        save_s=save_s,
        epoch_s=epoch_start_seconds(data, step_s),
        end_s=end_s,
        steps_timed=timed + more,
        parts=part_s,
    )
