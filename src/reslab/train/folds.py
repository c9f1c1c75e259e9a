"""K-fold cross-validation: `reslab train --folds K` trains K runs, RUN/fold-1 .. RUN/fold-K, each
with fold k of the training images as its val part (stratified and seeded by train.seed:
`reslab.data.array_dataset.stratified_fold_indices`; the test part untouched), then writes
RUN/folds.json (`FoldsSummary`): every metric of each fold's kept evaluation, and its mean and
sample standard deviation over the folds.

Each fold is a run like any other (its own config.yaml, checkpoints, weights, summary). RUN holds
the settings all folds share (config.yaml, data.fold unset) and folds.json from the start, so an
interrupted K-fold run resumed with `reslab train --resume RUN` resumes the fold it was in, starts
the ones not begun and skips the finished ones. A time budget (train.budget) is each fold's.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from reslab.config import Config, save_config, validate
from reslab.errors import ConfigError
from reslab.evaluation import data_source
from reslab.machine import mark_command_start
from reslab.rundir import FoldsSummary, FoldStats, RunDir
from reslab.train.build import check_folds
from reslab.train.distributed import Dist, init_distributed, on_rank0
from reslab.train.loop import open_new_run, resolve_resume, train

MAX_FOLDS = 20


def fold_config(cfg: Config, folds: int, k: int) -> Config:
    """The settings of fold k of K: the shared ones, val = fold k of the training images."""
    fold = copy.deepcopy(cfg)
    fold.data.folds, fold.data.fold = folds, k
    validate(fold)
    return fold


def fold_stats(values: list[float]) -> FoldStats:
    return FoldStats(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else None)


def summarize(run: RunDir, folds: int, seed: int) -> FoldsSummary:
    """folds.json's content from the folds' own summary.json: each finished fold's kept evaluation
    (its errors and losses), and their mean and sample std over the folds."""
    per_fold, finished = {}, []
    for k in range(1, folds + 1):
        summary = run.fold(k).read_summary()
        if summary is None:
            continue
        finished.append(k)
        record = summary.kept.evaluation if summary.kept is not None and summary.kept.evaluation else summary.final
        per_fold[run.fold(k).name] = {
            key: float(value) for key, value in record.items() if key.endswith(("error", "loss"))
        }
    names = sorted({key for record in per_fold.values() for key in record})
    stats = {
        name: fold_stats([r[name] for r in per_fold.values() if name in r and math.isfinite(r[name])]) for name in names
    }
    return FoldsSummary(folds=folds, seed=seed, finished=finished, per_fold=per_fold, stats=stats)


def train_folds(
    cfg: Config, run_dir: str | Path | None, folds: int, say: Callable[[str], object], *, ensemble: bool = False
) -> FoldsSummary:
    """Train the K folds of `cfg` into a new run directory (`ensemble`: then keep the K networks as
    one weights set); returns folds.json's content, or raises `Stopped` when a signal stopped a
    fold (its checkpoint written: resume the whole with --resume)."""
    if not 2 <= folds <= MAX_FOLDS:
        raise ConfigError(f"--folds must be between 2 and {MAX_FOLDS}; got {folds}")
    check_folds(data_source(fold_config(cfg, folds, 1)))  # before anything is written

    def start() -> RunDir:
        run, _ = open_new_run(cfg, run_dir)
        save_config(cfg, run.config)  # what every fold shares
        run.write_folds(FoldsSummary(folds=folds, seed=cfg.train.seed, ensemble=ensemble))
        return run

    with process_group(cfg.train.device) as dist:
        return _run_folds(on_rank0(dist, start), cfg, folds, say, dist, ensemble=ensemble)


def resume_folds(run_dir: str | Path, say: Callable[[str], object]) -> FoldsSummary:
    """Go on with an interrupted K-fold run: resume the fold that was stopped, train the rest."""
    run = RunDir(run_dir)
    record = run.read_folds()
    if record is None:
        raise ConfigError(f"{run} is not a K-fold run (no {run.folds_file.name})")
    cfg = run.load_config()
    validate(cfg)
    with process_group(cfg.train.device) as dist:
        return _run_folds(run, cfg, record.folds, say, dist, ensemble=record.ensemble)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Dist]:
    """Under torchrun, one process group for all the folds (each fold's run joins it; rank 0 alone
    writes the K-fold run's own files); a single process otherwise."""
    dist = init_distributed(device)
    try:
        yield dist
    finally:
        if dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Stopped(Exception):  # noqa: N818  (not an error: a signal asked the run to stop)
    """A signal stopped fold `k`; its checkpoint is written."""

    def __init__(self, k: int, result: dict) -> None:
        super().__init__(f"fold {k} stopped")
        self.k, self.result = k, result


def _run_folds(
    run: RunDir, cfg: Config, folds: int, say: Callable[[str], object], dist: Dist, *, ensemble: bool = False
) -> FoldsSummary:
    for k in range(1, folds + 1):
        fold = run.fold(k)
        state = on_rank0(dist, fold.state)  # every rank the same answer, read before any rank goes on
        if state == "finished":
            continue
        if dist.main:
            say(f"fold {k} of {folds}: {'resuming' if state == 'partial' else 'training'} {fold}")
        mark_command_start()  # a budget is each fold's: its clock starts now
        if state == "partial":
            result = train(resolve_resume(fold.path), fold.path, resume=True)
        else:
            result = train(fold_config(cfg, folds, k), fold.path)
        if "stopped" in result:
            raise Stopped(k, result)

    def finish() -> FoldsSummary:
        summary = summarize(run, folds, cfg.train.seed)
        if ensemble:
            summary.ensemble = True
            summary.ensemble_metrics = write_ensemble(run, folds, say)
        run.write_folds(summary)
        return summary

    return on_rank0(dist, finish)


def write_ensemble(run: RunDir, folds: int, say: Callable[[str], object]) -> dict[str, float]:
    """RUN/weights.safetensors: the K folds' kept networks as one (reslab.models.ensemble), flip TTA
    where most folds kept it, evaluated once on the test part; returns that evaluation."""
    from reslab.evaluation import EvalRequest, evaluate_weights, plan_evaluation
    from reslab.weights import load_weights, save_ensemble, write_meta

    members = [load_weights(run.fold(k).weights) for k in range(1, folds + 1)]
    tta = 2 * sum(m.meta.tta_flip for m in members) > folds  # a tie: off (half the cost)
    first = members[0].meta
    meta = dataclasses.replace(
        first,
        metrics={},
        evaluation={**first.evaluation, "tta_flip": tta},
        temperature=1.0,
        temperature_fit={},
        command=f"{first.command} (the {folds} folds' networks as one ensemble)",
    )
    path = save_ensemble(run.weights, members, meta)
    weights = load_weights(path)
    plan = plan_evaluation(weights, run.fold(1), EvalRequest(tta_flip=tta))  # fold 1's data: the same test part
    m = evaluate_weights(weights, plan, torch.device("cpu"))
    part = plan.part
    metrics = {f"{part}_top1_error": m["top1_error"], f"{part}_top5_error": m["top5_error"], f"{part}_loss": m["loss"]}
    write_meta(path, dataclasses.replace(weights.meta, metrics={**metrics, "eval_tta_flip": float(tta)}))
    say(
        f"ensemble of {folds} folds: {path}, {part} top-1 error {100 * m['top1_error']:.2f}%"
        f"{' (flip TTA, as most folds chose)' if tta else ''}; eval, predict, serve and export average the "
        f"{folds} networks' probabilities: {folds}x one network's compute per image"
    )
    return metrics


def folds_lines(summary: FoldsSummary) -> list[str]:
    """A table of the folds' kept top-1 errors (and losses), then mean +- std over the folds."""
    names = [n for n in summary.stats if n.endswith("top1_error")] + [n for n in summary.stats if n.endswith("loss")]
    width = max([len(n) for n in names] + [6])
    lines = [f"{'':8}" + "".join(f"  {n:>{width}}" for n in names)]
    for fold, record in summary.per_fold.items():
        lines.append(f"{fold:8}" + "".join(f"  {_shown(n, record.get(n)):>{width}}" for n in names))
    for label, pick in (("mean", lambda s: s.mean), ("std", lambda s: s.std)):
        lines.append(f"{label:8}" + "".join(f"  {_shown(n, pick(summary.stats[n])):>{width}}" for n in names))
    return lines


def _shown(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if name.endswith("error") else f"{value:.4f}"
