"""A run's live objects <-> its `Checkpoint`: what a checkpoint of a `Trainer` holds, whether a
checkpoint fits a run, and resuming from the newest one that does.

`reslab.checkpoint` owns the file protocol and the `Checkpoint` record; this module maps it onto
the trainer's model, optimizer, EMA, scaler, schedule, position, RNG states and best evaluation.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import torch

from reslab.checkpoint import Checkpoint, load_latest_good, set_aside_newer, set_rng_states
from reslab.errors import CheckpointError
from reslab.train.distributed import on_rank0
from reslab.train.schedule import ScheduleState
from reslab.train.state import BestSoFar, TrainState

if TYPE_CHECKING:
    from reslab.train.trainer import Trainer

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


def make_checkpoint(trainer: Trainer, ranks: list[tuple[dict, torch.Tensor]]) -> Checkpoint:
    """This run's state as a `Checkpoint`; `ranks` holds each process's (RNG states, data order)."""
    from reslab import __version__

    return Checkpoint(
        model=trainer.model.state_dict(),
        optimizer=trainer.optimizer.state_dict(),
        position=trainer.state.position(),
        schedule=trainer.schedule.state_dict(),
        rng=[rng for rng, _ in ranks],
        data_order=[order for _, order in ranks],
        config=trainer.cfg.to_dict(),
        elapsed=time.perf_counter() - trainer.wall_start,
        world_size=trainer.dist.world_size,
        reslab_version=__version__,
        ema=trainer.ema.state_dict() if trainer.ema is not None else None,
        scaler=trainer.scaler.state_dict() if trainer.scaler is not None else None,
        best=trainer.best.as_dict(),
        best_weights=trainer.best_weights,
    )


def check_fits(trainer: Trainer, checkpoint: Checkpoint) -> None:
    """A CheckpointError unless the checkpoint's content fits this run's objects."""
    where = f"checkpoint {checkpoint.path.name if checkpoint.path else ''}"
    saved_model = checkpoint.config.get("model", {}).get("name") if isinstance(checkpoint.config, dict) else None
    if saved_model not in (None, trainer.cfg.model.name):
        raise CheckpointError(f"{where} holds {saved_model} but config.yaml names {trainer.cfg.model.name}")
    for what, module, saved in (
        ("model", trainer.model, checkpoint.model),
        ("ema", trainer.ema, checkpoint.ema),
        ("best", trainer.eval_model, checkpoint.best_weights),
    ):
        if module is None or (what != "model" and saved is None):  # no EMA / best before: it starts fresh
            continue
        own = module.state_dict()
        if saved is None or set(saved) != set(own):
            raise CheckpointError(f"{where}: its {what} weights do not have this run's keys")
        wrong = [k for k in own if not isinstance(saved[k], torch.Tensor) or saved[k].shape != own[k].shape]
        if wrong:
            raise CheckpointError(f"{where}: its {what} weights have other shapes ({', '.join(wrong[:3])})")
    groups = checkpoint.optimizer.get("param_groups")
    own_sizes = [len(g["params"]) for g in trainer.optimizer.param_groups]
    if (
        not isinstance(groups, list)
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
        or [len(g["params"]) for g in groups] != own_sizes
    ):
        raise CheckpointError(f"{where}: its optimizer state does not fit this run's parameters")
    if set(checkpoint.schedule) != set(trainer.schedule.state_dict()):
        raise CheckpointError(f"{where}: its schedule state has other fields")


def resume_from_checkpoint(trainer: Trainer) -> None:
    """Restore the newest usable checkpoint (rank 0 reads and checks it and hands it to the others).

    A run killed before its first checkpoint landed (config.yaml, at most the leftovers of a write
    cut short) starts again from step 0 with its saved config: the trainer is then exactly as a
    new run would be, as nothing here draws from an RNG."""
    run, dist = trainer.run, trainer.dist

    def load() -> tuple[Checkpoint | None, list[str], list[str]]:
        run.remove_stale_temps()
        if not run.holds_run():
            return None, [], []
        checkpoint, problems = load_latest_good(run, check=lambda checkpoint: check_fits(trainer, checkpoint))
        moved = set_aside_newer(run, checkpoint.path)
        return checkpoint, problems, [p.name for p in moved]

    checkpoint, problems, moved = on_rank0(dist, load)
    if checkpoint is None:
        if dist.main:
            print(
                f"no checkpoint in {run.path} (stopped before its first one): starting from step 0 "
                "with its config.yaml",
                file=sys.stderr,
            )
            run.drop_metrics_after(0)
        return
    restore(trainer, checkpoint)
    notes = [f"{problem}; falling back to an older checkpoint" for problem in problems]
    notes += [f"set aside damaged {name} as {name}.damaged" for name in moved]
    notes += mismatches(trainer, checkpoint)
    trainer.wall_start -= checkpoint.elapsed
    if dist.main:
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        name = checkpoint.path.name if checkpoint.path else ""
        print(f"resuming {run.path} from {name} (step {trainer.state.step}/{trainer.total})", file=sys.stderr)
        run.drop_metrics_after(trainer.state.step)


def restore(trainer: Trainer, checkpoint: Checkpoint) -> None:
    trainer.model.load_state_dict(checkpoint.model)
    trainer.optimizer.load_state_dict(checkpoint.optimizer)
    if trainer.ema is not None and checkpoint.ema is not None:
        trainer.ema.load_state_dict(checkpoint.ema)
    if trainer.scaler is not None and checkpoint.scaler is not None:
        trainer.scaler.load_state_dict(checkpoint.scaler)
    same_world = checkpoint.world_size == trainer.dist.world_size
    set_rng_states(checkpoint.rng[trainer.dist.rank if same_world else 0])
    trainer.state = TrainState(**checkpoint.position)
    trainer.schedule.state = ScheduleState(**checkpoint.schedule)
    trainer.best = BestSoFar(**checkpoint.best) if checkpoint.best is not None else BestSoFar()
    trainer.best_weights = checkpoint.best_weights
    # The checkpoint holds this very step: writing it again would replace its checksum file before
    # the file itself, and a kill between the two would leave the pair mismatched.
    trainer.last_saved = checkpoint.step


def mismatches(trainer: Trainer, checkpoint: Checkpoint) -> list[str]:
    """Why the resumed run will not match an uninterrupted one, if it will not."""
    notes, dist = [], trainer.dist
    if checkpoint.world_size != dist.world_size:
        notes.append(
            f"the checkpoint was written by {checkpoint.world_size} process(es), this run has "
            f"{dist.world_size}: it continues, but will not match an uninterrupted run exactly"
        )
    elif not torch.equal(checkpoint.data_order[dist.rank], trainer.data.train.order(trainer.state.epoch)):
        notes.append(
            f"the data order of epoch {trainer.state.epoch} differs from the checkpoint's (another "
            "dataset or torch version?): the run will not match an uninterrupted one exactly"
        )
    changed = config_changes(checkpoint.config, trainer.cfg.to_dict())
    if changed:
        notes.append(f"config.yaml differs from the checkpoint's config in {', '.join(changed)}; using config.yaml")
    return notes
