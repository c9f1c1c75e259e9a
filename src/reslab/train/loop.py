"""`train(cfg, run_dir)`: one training run from a resolved `Config`, start to end.

The driver only sets the process up (threads, torchrun, device, seeds), opens the run directory
and hands over to `Trainer` (reslab.train.trainer), which owns the run. The run directory's
layout is `reslab.rundir.RunDir`'s. A new run that fails with a user error (a `ReslabError`)
before its first checkpoint leaves nothing behind: there is nothing to resume, and a directory
holding only a config.yaml would look like a run.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reslab.config import Config, apply_settings, parse_override, validate
from reslab.device import resolve_device
from reslab.errors import ConfigError, ReslabError
from reslab.records import to_json
from reslab.rundir import RunDir
from reslab.train.budget import Speed
from reslab.train.build import part_size
from reslab.train.distributed import Dist, init_distributed, on_rank0
from reslab.train.resume import RUNTIME_SETTINGS
from reslab.train.trainer import Trainer

__all__ = ["RUNTIME_SETTINGS", "RunCost", "measure", "resolve_resume", "train"]


def train(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False) -> dict[str, Any]:
    """Train per `cfg` (or resume the run in `run_dir`); returns the final summary, or
    {"stopped": SIGNAL, "step", "run_dir"} when a signal stopped it (a checkpoint was written)."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    dist = init_distributed(cfg.train.device)
    try:
        device = resolve_device(cfg.train.device, dist.local_rank if dist.world_size > 1 else None)
        set_determinism(cfg)
        check_sync_bn(cfg, dist, device)
        if not resume and run_dir is not None and auto_resume(cfg):
            found = on_rank0(dist, lambda: _resumable(RunDir(run_dir)))  # decided once, by rank 0
            if found == "finished":
                return on_rank0(dist, lambda: _finished(RunDir(run_dir)))
            if found is not None:
                runtime = [f"train.threads={cfg.train.threads}", f"train.progress={str(cfg.train.progress).lower()}"]
                cfg, resume = resolve_resume(Path(run_dir), runtime), True
        if resume:
            return Trainer(cfg, RunDir(run_dir), dist, device, resume=True).fit()
        run, created = on_rank0(dist, lambda: open_new_run(cfg, run_dir))
        try:
            return Trainer(cfg, run, dist, device, resume=False).fit()
        except ReslabError:
            if dist.main:
                remove_failed_start(run, created)
            raise
    finally:
        if dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclass(frozen=True)
class RunCost:
    """What a run of a config costs on this machine, measured as a budgeted run measures itself."""

    speed: Speed  # its steps, evaluations (`Speed.parts`: each whole part), checkpoint writes
    steps_per_epoch: int
    part_images: dict[str, int]  # images of each evaluated part


def measure(cfg: Config, seconds: float) -> RunCost:
    """The cost of a run of `cfg` (its model, data, precision and batch; length and budget unset),
    measured on a throwaway run in a temporary folder, its steps timed for about MEASURE_SHARE of
    `seconds`. For experiments that share one budget among several runs (`reslab reproduce
    --budget`); in this process, with its threads."""
    cfg = copy.deepcopy(cfg)
    cfg.train.budget, cfg.train.budget_steps, cfg.train.iterations, cfg.train.epochs = "", 0, 1, 0.0
    cfg.train.progress = False
    dist = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, None)
    set_determinism(cfg)
    with tempfile.TemporaryDirectory(prefix="reslab-measure-") as folder:
        trainer = Trainer(cfg, RunDir(folder), dist, device, resume=False)
        try:
            speed = trainer.measure_speed(trainer.precision, seconds)
        finally:
            trainer.log.close()
        images = {part: part_size(batches) for part, batches in trainer.data.evals.items()}
        return RunCost(speed, len(trainer.data.train), images)


def auto_resume(cfg: Config) -> bool:
    """Whether a new run on a directory that holds one resumes it: train.auto_resume, or a worker
    group that torchrun's elastic agent restarted."""
    return cfg.train.auto_resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def _resumable(run: RunDir) -> str | None:
    """What a run directory holds for auto-resume: "finished", "partial" (checkpoints), "new" (a
    config.yaml and no checkpoint: the run starts again from step 0 with it), or None (no run)."""
    if not run.config.is_file():
        return None
    state = run.state()
    if state != "finished":
        why = "torchrun restarted the workers" if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" else ""
        print(f"auto-resume ({why or 'train.auto_resume'}): {run} holds a run: resuming it", file=sys.stderr)
    return state


def _finished(run: RunDir) -> dict[str, Any]:
    """A finished run's summary, as `train` returns it (auto-resume of a run that had ended)."""
    summary = run.read_summary()
    if summary is None:
        raise ConfigError(f"{run} is finished but its {run.summary.name} cannot be read; resume it with --resume")
    print(f"{run} is finished: nothing to resume; its weights are {run.weights}", file=sys.stderr)
    return to_json(summary)


def set_determinism(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def open_new_run(cfg: Config, run_dir: str | Path | None) -> tuple[RunDir, list[Path]]:
    """The directory of a new run (created), refusing a file or one that already holds a run; and
    the directories this call created, the run's own first, then its new parents."""
    run = RunDir(run_dir) if run_dir else RunDir.new_path(cfg.train.out_dir, cfg.model.name, cfg.data.dataset)
    choose = "choose another --run-dir" if run_dir else "check train.out_dir or pass --run-dir"
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"{run} is a file, not a run directory; {choose}")
    if run.holds_run():
        raise ConfigError(
            f"{run} already holds a run; resume it with `reslab train --resume {run}` or choose another --run-dir"
        )
    created = [p for p in (run.path, *run.path.parents) if not p.exists()]
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, a read-only disk
        raise ConfigError(f"cannot create the run directory {run} ({exc.strerror or exc}); {choose}") from None
    run.remove_stale_temps()
    return run, created


def remove_failed_start(run: RunDir, created: list[Path]) -> None:
    """Take away what a new run wrote before it failed: its files, then the directories `open_new_run`
    created, each only if nothing else is in it. Nothing when the run directory existed before this
    run (it may hold the user's files) or holds checkpoints (a run to resume)."""
    if not created or created[0] != run.path or run.holds_run():
        return
    for f in (run.config, run.metrics, run.summary, run.weights, run.best_weights):
        f.unlink(missing_ok=True)
    run.remove_stale_temps()
    for f in run.tensorboard.glob("events.out.tfevents.*"):
        f.unlink(missing_ok=True)
    for d in (run.tensorboard, run.checkpoints_dir):
        with contextlib.suppress(OSError):  # absent, or holding something this run did not write
            d.rmdir()
    for d in created:  # the run directory, then the parents this call made
        try:
            d.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: someone else's files are in it (and so in its parents)
            return


def resolve_resume(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The run's saved config, with `overrides` (section.key=value) applied on top."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise ConfigError(f"{run} is not a reslab run directory (no {run.config.name}); nothing to resume")
    cfg = run.load_config()
    try:
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{run.config}: {exc}; repair it or start a new run") from None
    for text in overrides or []:
        apply_settings(cfg, parse_override(text), f"--set {text}")
    validate(cfg)
    return cfg


def check_sync_bn(cfg: Config, dist: Dist, device: torch.device) -> None:
    if dist.world_size > 1 and cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError(
            "train.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); "
            "leave it off for CPU/gloo runs"
        )
