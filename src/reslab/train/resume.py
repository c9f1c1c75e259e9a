"""Resuming a run: the newest checkpoint that fits its `TrainingState`, read once on rank 0 and
handed to the others, put back with `TrainingState.load_state_dict`, and what will differ from an
uninterrupted run said in warnings.

`reslab.checkpoint` owns the file protocol and the `Checkpoint` record; `reslab.train.state` owns
what a checkpoint restores. This module only chooses the checkpoint and restores it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from reslab.checkpoint import Checkpoint, load_latest_good, set_aside_newer, set_rng_states
from reslab.config import Config
from reslab.errors import CheckpointError
from reslab.rundir import RunDir
from reslab.train.distributed import Dist, on_rank0
from reslab.train.state import TrainingState

# Settings that change how fast a run goes, not what it computes: a resume may change them.
RUNTIME_SETTINGS = ("train.threads", "train.progress")


def config_changes(saved: dict, current: dict) -> list[str]:
    """section.key of each setting that differs between a checkpoint's config and the current one."""
    return [
        f"{section}.{key}"
        for section, values in current.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if saved.get(section, {}).get(key) != value and f"{section}.{key}" not in RUNTIME_SETTINGS
    ]


def check_fits(training: TrainingState, model_name: str, checkpoint: Checkpoint) -> None:
    """A CheckpointError unless the checkpoint holds this model and its state fits `training`."""
    where = f"checkpoint {checkpoint.path.name if checkpoint.path else ''}"
    saved_model = checkpoint.config.get("model", {}).get("name") if isinstance(checkpoint.config, dict) else None
    if saved_model not in (None, model_name):
        raise CheckpointError(f"{where} holds {saved_model} but config.yaml names {model_name}")
    training.check_fits(checkpoint.training_state(), where)


def newest_fitting(run: RunDir, dist: Dist, check: Callable[[Checkpoint], None]) -> tuple[Checkpoint | None, list[str]]:
    """(the newest checkpoint that passes `check`, notes on those set aside), read by rank 0 and
    shared; (None, []) for a run killed before its first checkpoint landed."""

    def load() -> tuple[Checkpoint | None, list[str]]:
        run.remove_stale_temps()
        if not run.holds_run():
            return None, []
        checkpoint, problems = load_latest_good(run, check=check)
        moved = set_aside_newer(run, checkpoint.path)
        notes = [f"{problem}; falling back to an older checkpoint" for problem in problems]
        return checkpoint, notes + [f"set aside damaged {p.name} as {p.name}.damaged" for p in moved]

    return on_rank0(dist, load)


def resume_from_newest(
    run: RunDir,
    dist: Dist,
    training: TrainingState,
    cfg: Config,
    order_of: Callable[[int], torch.Tensor],
    total: int,
) -> Checkpoint | None:
    """Restore `training` and this process's RNG states from the newest usable checkpoint; returns
    it, or None when there is none (a run killed before its first checkpoint: it starts again from
    step 0 with its saved config, exactly as a new run would, as nothing here draws from an RNG).
    `order_of(epoch)` is this process's data order, to tell whether the data changed; `total` the
    run's steps, for the line that says where it resumes."""
    checkpoint, notes = newest_fitting(run, dist, lambda c: check_fits(training, cfg.model.name, c))
    if checkpoint is None:
        if dist.main:
            print(
                f"no checkpoint in {run.path} (stopped before its first one): starting from step 0 "
                "with its config.yaml",
                file=sys.stderr,
            )
            run.drop_metrics_after(0)
        return None
    training.load_state_dict(checkpoint.training_state())
    same_world = checkpoint.world_size == dist.world_size
    set_rng_states(checkpoint.rng[dist.rank if same_world else 0])
    notes += mismatches(checkpoint, dist, order_of(training.position.epoch), cfg)
    if dist.main:
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        name = checkpoint.path.name if checkpoint.path else ""
        print(f"resuming {run.path} from {name} (step {checkpoint.step}/{total})", file=sys.stderr)
        run.drop_metrics_after(checkpoint.step)
    return checkpoint


def mismatches(checkpoint: Checkpoint, dist: Dist, order: torch.Tensor, cfg: Config) -> list[str]:
    """Why the resumed run will not match an uninterrupted one, if it will not; `order` is this
    process's data order of the checkpoint's epoch."""
    notes = []
    epoch = checkpoint.position["epoch"]
    if checkpoint.world_size != dist.world_size:
        notes.append(
            f"the checkpoint was written by {checkpoint.world_size} process(es), this run has "
            f"{dist.world_size}: it continues, but will not match an uninterrupted run exactly"
        )
    elif not torch.equal(checkpoint.data_order[dist.rank], order):
        notes.append(
            f"the data order of epoch {epoch} differs from the checkpoint's (another "
            "dataset or torch version?): the run will not match an uninterrupted one exactly"
        )
    changed = config_changes(checkpoint.config, cfg.to_dict())
    if changed:
        notes.append(f"config.yaml differs from the checkpoint's config in {', '.join(changed)}; using config.yaml")
    return notes
