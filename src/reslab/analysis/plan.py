"""How the training experiments configure their runs: recipe, length, schedule, model names.

All CIFAR-style experiments start from the `cifar-paper` recipe (SGD 0.9, wd 1e-4, batch 128,
lr 0.1). The learning rate is divided by 10 at 50% and 75% of the iterations, which is the
paper's 32k/48k of 64k; a shorter run keeps that shape. On CIFAR the default length is the
paper's 64k iterations; on any other dataset it is DEFAULT_EPOCHS epochs, and those datasets train
on their whole training set (data.split=full), since the paper's 45k/5k split is CIFAR's.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from reslab.analysis.budget import decide, measure_nets
from reslab.analysis.experiment import Execution, Experiment, RunSpec, available_cores
from reslab.analysis.paper import PAPER_CIFAR_ITERATIONS
from reslab.config import load_config
from reslab.data import load_cached, source_files
from reslab.data.datasets import stored_splits
from reslab.errors import ConfigError, DataError
from reslab.expdir import BudgetDecision, Settings
from reslab.models import model_info

RECIPE = "cifar-paper"
PAPER_DATA = ("cifar10", "cifar100")  # datasets the paper's recipe is made for
DEFAULT_EPOCHS = 10.0  # other datasets: a CPU-sized run (Fashion-MNIST: 10 x 468 = 4,680 iterations)
EVAL_POINTS = 32  # evaluations per run (the paper's 64k iterations: every 2,000)
KEEP_ALL_CHECKPOINTS = 1_000_000  # degradation keeps one per evaluation until train_error.json is written


def cifar_model(depth: int, residual: bool) -> str:
    """plain56 / resnet56 where registered as CIFAR nets, else plain_cifar_D / resnet_cifar_D."""
    fixed = f"{'resnet' if residual else 'plain'}{depth}"
    try:
        if model_info(fixed).family == ("resnet-cifar" if residual else "plain-cifar"):
            return fixed
    except KeyError:
        pass
    return f"{'resnet' if residual else 'plain'}_cifar_{depth}"


def check_depths(depths: list[int]) -> None:
    bad = [d for d in depths if d < 8 or (d - 2) % 6]
    if bad:
        raise ConfigError(
            f"--depths {','.join(map(str, bad))}: CIFAR networks have 6n+2 layers (8, 14, 20, 26, 32, 44, 56, 110, ...)"
        )
    if not depths:
        raise ConfigError("--depths needs at least one depth, e.g. --depths 20,56")


def check_data(settings: Settings) -> None:
    """Fail before anything is trained when the dataset's files are not there (or cannot be fetched
    under --set data.download=true)."""
    if settings.data == "imagefolder" and not settings.data_dir:
        raise DataError("--data imagefolder needs --data-dir ROOT (with train/ and val/ folders)")
    d = load_config(RECIPE, [*_data_overrides(settings), *settings.overrides]).data
    try:
        for split in stored_splits(d.dataset, d.data_dir) if d.dataset in ("imagefolder", "csv") else ("train", "test"):
            source_files(d.dataset, split, d.data_dir, download=d.download)
    except DataError as exc:
        hint = (
            ""
            if settings.data == "fashion-mnist"
            else " (Fashion-MNIST is on this kind of machine: --data fashion-mnist; smoke test: --data synthetic)"
        )
        raise DataError(f"{exc}{hint}") from None


@dataclass
class TrainingPlan:
    recipe: str
    overrides: list[str]  # shared by every run, before model.name / train.seed
    iterations: int
    milestones: list[int]
    eval_every: int
    length_note: str  # how the length was chosen, for the report

    def spec(self, model: str, seed: int) -> RunSpec:
        return RunSpec(
            f"{model}-seed{seed}",
            model,
            seed,
            self.recipe,
            [*self.overrides, f"model.name={model}", f"train.seed={seed}"],
        )


def _data_overrides(settings: Settings) -> list[str]:
    out = [f"data.dataset={settings.data}"]
    if settings.data_dir:
        out.append(f"data.data_dir={settings.data_dir}")
    if settings.data not in PAPER_DATA:
        out.append("data.split=full")
    return out


def steps_per_epoch(overrides: list[str]) -> int:
    cfg = load_config(RECIPE, [*overrides, "train.iterations=1", "train.epochs=0"])
    d = cfg.data
    n = len(
        load_cached(
            d.dataset,
            "train",
            d.data_dir,
            cache_dir=d.cache_dir,
            image_size=d.image_size,
            synthetic_size=d.synthetic_size,
        )
    )
    if d.split == "paper":
        n -= d.val_size
    if n < cfg.train.batch_size:
        raise ConfigError(
            f"{n} training images make no whole batch of {cfg.train.batch_size}; "
            "lower train.batch_size (--set train.batch_size=N)"
        )
    return n // cfg.train.batch_size


def fit_budget(
    exp: Experiment, execution: Execution, models: list[str], *, train_images: int = 0
) -> BudgetDecision | None:
    """--budget: what it comes to for these runs (reslab.analysis.budget), decided on the first
    invocation and recorded with the experiment (saved by `exp.start()`); None without a budget."""
    s = exp.settings
    if not s.budget:
        return None
    if exp.record.budget is not None:
        print(f"{exp.record.budget.line} (decided when the experiment started)", file=sys.stderr)
        return exp.record.budget
    if execution.measure is None:
        raise RuntimeError("Execution.measure is needed to fit a budget")
    runs = len(models) * s.seeds
    slots = min(execution.parallel, runs)
    threads = max(1, available_cores() // slots) if slots > 1 else torch.get_num_threads()
    nets = measure_nets(
        execution.measure, RECIPE, [*_data_overrides(s), *s.overrides], dict.fromkeys(models, s.seeds), threads
    )
    decision, _ = decide(s.budget, nets, slots, train_images)
    print(decision.line, file=sys.stderr)
    exp.record.budget = decision
    return decision


def training_plan(
    settings: Settings, *, checkpoint_each_eval: bool = False, budget: BudgetDecision | None = None
) -> TrainingPlan:
    """The shared overrides of an experiment's runs (user --set overrides applied last)."""
    data = _data_overrides(settings)
    user = list(settings.overrides)
    if budget is not None:
        total, note = budget.iterations, budget.line
    elif settings.iterations:
        total, note = settings.iterations, f"{settings.iterations:,} iterations (--iterations)"
    elif settings.epochs or settings.data not in PAPER_DATA:
        epochs = settings.epochs or DEFAULT_EPOCHS
        per_epoch = steps_per_epoch(data + user)
        total = max(1, math.ceil(epochs * per_epoch))
        note = f"{epochs:g} epochs of {per_epoch:,} iterations = {total:,} iterations" + (
            "" if settings.epochs else f" (default for {settings.data}; set with --epochs)"
        )
    else:
        total, note = PAPER_CIFAR_ITERATIONS, f"{PAPER_CIFAR_ITERATIONS:,} iterations, as in the paper"
    milestones = [max(1, round(0.5 * total)), max(1, round(0.75 * total))]
    eval_every = budget.eval_every if budget is not None else max(1, round(total / EVAL_POINTS))
    ours = [
        f"train.iterations={total}",
        "train.epochs=0",
        f"schedule.milestones=[{milestones[0]},{milestones[1]}]",
        f"train.eval_every={eval_every}",
    ]
    if budget is not None and budget.eval_images:
        ours.append(f"train.eval_images={budget.eval_images}")
    if checkpoint_each_eval:
        eval_every = load_config(RECIPE, [*data, *ours, *user]).train.eval_every  # the user's, if set
        ours += [f"train.checkpoint_every={eval_every}", f"train.keep_checkpoints={KEEP_ALL_CHECKPOINTS}"]
    user_keys = {o.split("=", 1)[0].strip() for o in user}
    ours = [o for o in ours if o.split("=", 1)[0] not in user_keys]  # the user's --set wins; say it once
    cfg = load_config(RECIPE, [*data, *ours, *user])  # validates every override now, not per run
    return TrainingPlan(
        RECIPE, [*data, *ours, *user], cfg.train.iterations, list(cfg.schedule.milestones), cfg.train.eval_every, note
    )
