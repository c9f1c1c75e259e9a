"""`train(cfg, run_dir)`: one training run from a resolved `Config`, start to end.

The driver only sets the process up (threads, torchrun, device, seeds), opens the run directory
and hands over to `Trainer` (reslab.train.trainer), which owns the run. The run directory's
layout is `reslab.rundir.RunDir`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from reslab.config import Config, apply_settings, config_from_dict, parse_override
from reslab.device import resolve_device
from reslab.errors import ConfigError
from reslab.rundir import RunDir
from reslab.train.distributed import init_distributed, on_rank0
from reslab.train.resume import RUNTIME_SETTINGS
from reslab.train.trainer import Trainer, check_sync_bn

__all__ = ["RUNTIME_SETTINGS", "resolve_resume", "train"]


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
        run = RunDir(run_dir) if resume else on_rank0(dist, lambda: open_new_run(cfg, run_dir))
        return Trainer(cfg, run, dist, device, resume=resume).fit()
    finally:
        if dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def set_determinism(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def open_new_run(cfg: Config, run_dir: str | Path | None) -> RunDir:
    """The directory of a new run (created), refusing one that already holds a run."""
    run = RunDir(run_dir) if run_dir else RunDir.new_path(cfg.train.out_dir, cfg.model.name, cfg.data.dataset)
    if run.holds_run():
        raise ConfigError(
            f"{run} already holds a run; resume it with `reslab train --resume {run}` or choose another --run-dir"
        )
    run.path.mkdir(parents=True, exist_ok=True)
    run.remove_stale_temps()
    return run


def resolve_resume(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The run's saved config, with `overrides` (section.key=value) applied on top."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise ConfigError(f"{run} is not a reslab run directory (no {run.config.name}); nothing to resume")
    cfg = config_from_dict(run.read_config())
    for text in overrides or []:
        apply_settings(cfg, parse_override(text), f"--set {text}")
    return cfg
