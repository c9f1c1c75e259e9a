"""What a finished run writes about itself: summary.json, and the metadata its weights carry."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from reslab.machine import environment
from reslab.rundir import ClassWeights, Distributed, KeptWeights, Metrics, RunSummary, StoppedEarly
from reslab.weights import WeightsMeta

if TYPE_CHECKING:
    from reslab.train.trainer import Trainer


def run_summary(trainer: Trainer, final: Metrics, digests: list[str] | None) -> RunSummary:
    """summary.json: what the run did, what it kept, and on what."""
    s, dist = trainer.state, trainer.dist
    stopped_early = None
    if trainer.stopped_early:
        stopped_early = StoppedEarly(
            step=s.step, evaluations_without_improvement=trainer.best.stale, early_stop=trainer.cfg.train.early_stop
        )
    distributed = None
    if dist.world_size > 1:
        distributed = Distributed(world_size=dist.world_size, backend=dist.backend, weights_sha256_per_rank=digests)
    return RunSummary(
        run_dir=str(trainer.run),
        model=trainer.cfg.model.name,
        dataset=trainer.data.name,
        synthetic_data=trainer.data.synthetic,
        steps=s.step,
        total_steps=trainer.total,
        epochs=round(s.step / trainer.steps_per_epoch, 3),
        wall_time_s=round(time.perf_counter() - trainer.wall_start, 2),
        final=final,  # the last evaluation
        kept=kept_summary(trainer, final),  # the evaluation of the weights the run ended with
        skipped_steps=s.skipped_steps,
        class_weights=class_weights_summary(trainer),
        environment=environment(),
        stopped_early=stopped_early,
        distributed=distributed,
    )


def kept_summary(trainer: Trainer, final: Metrics) -> KeptWeights:
    """Which weights the run ended with (train.keep), and their evaluation on the watched part."""
    keep, watch = trainer.cfg.train.keep, trainer.watch
    record = trainer.best.record if keep == "best" else final
    return KeptWeights(
        keep=keep,
        step=record.get("step", trainer.state.step),
        part=watch,
        top1_error=record.get(f"{watch}_top1_error") if watch else None,
        evaluation=record,
    )


def class_weights_summary(trainer: Trainer) -> str | ClassWeights:
    if trainer.class_weights is None:
        return "none"
    return ClassWeights(
        mode=trainer.cfg.optim.class_weights,
        class_counts=trainer.data.train.class_counts().tolist(),
        weights=[round(w, 6) for w in trainer.class_weights.tolist()],
    )


def weights_meta(trainer: Trainer, final: Metrics, step: int | None = None) -> WeightsMeta:
    """What weights record: architecture, classes, preprocessing, data, metrics, command; `step`
    (the kept weights of train.keep=best) says which step's evaluation the metrics are."""
    cfg, data = trainer.cfg, trainer.data
    metrics = {k: v for k, v in final.items() if k.endswith(("error", "loss"))}
    metrics["eval_tta_flip"] = float(cfg.train.tta_flip)  # how the test metrics were measured
    if step is not None:
        metrics["step"] = step
    return WeightsMeta(
        model=cfg.model.name,
        num_classes=len(data.classes),
        in_chans=data.in_chans,
        options={k: v for k, v in {"shortcut": cfg.model.shortcut}.items() if v},
        classes=data.classes,
        input_size=data.image_size,
        resize=data.preprocess.resize,
        dataset=data.name,
        data_dir=cfg.data.data_dir or "",
        metrics=metrics,
        evaluation={
            "tta_flip": cfg.train.tta_flip,
            "precision": trainer.precision,
            "channels_last": cfg.train.channels_last,
        },
        command=environment()["command"],
        data_sha256=trainer.data_sha256,
    )
