"""What a finished run writes about itself: summary.json, and the metadata its weights carry.

Both are built from what the run owns, handed over explicitly: its config, data, `RunPlan`,
`TrainingState` and last evaluation, and (`RunEnd`) how it ended."""

from __future__ import annotations

from dataclasses import dataclass

from reslab.config import Config
from reslab.machine import environment
from reslab.rundir import ClassWeights, Distributed, KeptWeights, Metrics, RunDir, RunSummary, StoppedEarly
from reslab.train.build import Data
from reslab.train.finish import EndChecks
from reslab.train.plan import RunPlan
from reslab.train.state import TrainingState
from reslab.weights import WeightsMeta


@dataclass(frozen=True)
class Kept:
    """The weights a run ends with: their metadata, their evaluation, and the end-of-run checks."""

    meta: WeightsMeta
    record: Metrics  # the kept weights' evaluation, as their metadata records it
    checks: EndChecks | None = None  # flip TTA and temperature decided on val (reslab.train.finish)


@dataclass(frozen=True)
class RunEnd:
    """How a run ended, beside its state: the wall time, an early stop, the processes it ran on."""

    wall_time_s: float
    stopped_early: bool
    world_size: int = 1
    backend: str = ""  # gloo | nccl under torchrun
    digests: list[str] | None = None  # SHA-256 of each rank's final weights (torchrun)
    kept: Kept | None = None


def run_summary(
    run: RunDir, cfg: Config, data: Data, plan: RunPlan, training: TrainingState, final: Metrics, end: RunEnd
) -> RunSummary:
    """summary.json: what the run did, what it kept, and on what."""
    position, checks = training.position, end.kept.checks if end.kept is not None else None
    stopped_early = None
    if end.stopped_early:
        stopped_early = StoppedEarly(
            step=position.step, evaluations_without_improvement=training.best.stale, early_stop=cfg.train.early_stop
        )
    distributed = None
    if end.world_size > 1:
        distributed = Distributed(world_size=end.world_size, backend=end.backend, weights_sha256_per_rank=end.digests)
    return RunSummary(
        run_dir=str(run),
        model=cfg.model.name,
        dataset=data.name,
        synthetic_data=data.synthetic,
        steps=position.step,
        total_steps=plan.total,
        epochs=round(position.step / plan.steps_per_epoch, 3),
        wall_time_s=round(end.wall_time_s, 2),
        final=final,  # the last evaluation
        kept=kept_summary(cfg.train.keep, plan.watch, training, end.kept.record if end.kept else final),
        skipped_steps=position.skipped_steps,
        class_weights=class_weights_summary(cfg, data, plan),
        environment=environment(),
        stopped_early=stopped_early,
        distributed=distributed,
        calibrated=checks.calibrated() if checks is not None else None,
        flip_tta=checks.flip if checks is not None else None,
    )


def kept_summary(keep: str, watch: str | None, training: TrainingState, record: Metrics) -> KeptWeights:
    """Which weights the run ended with (train.keep), and their evaluation `record` on the watched part."""
    return KeptWeights(
        keep=keep,
        step=record.get("step", training.position.step),
        part=watch,
        top1_error=record.get(f"{watch}_top1_error") if watch else None,
        evaluation=record,
    )


def class_weights_summary(cfg: Config, data: Data, plan: RunPlan) -> str | ClassWeights:
    if plan.class_weights is None:
        return "none"
    return ClassWeights(
        mode=cfg.optim.class_weights,
        class_counts=data.train.class_counts().tolist(),
        weights=[round(w, 6) for w in plan.class_weights.tolist()],
    )


def weights_meta(
    cfg: Config,
    data: Data,
    precision: str,
    data_sha256: str,
    final: Metrics,
    step: int | None = None,
    *,
    tta_flip: bool | None = None,
) -> WeightsMeta:
    """What weights record: architecture, classes, preprocessing, data, metrics, command; `step`
    (the kept weights of train.keep=best) says which step's evaluation the metrics are; `tta_flip`
    how they were measured, and so how predict uses the weights (None: train.tta_flip)."""
    tta_flip = cfg.train.tta_flip if tta_flip is None else tta_flip
    metrics = {k: v for k, v in final.items() if k.endswith(("error", "loss"))}
    metrics["eval_tta_flip"] = float(tta_flip)  # how the test metrics were measured
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
            "tta_flip": tta_flip,
            "precision": precision,
            "channels_last": cfg.train.channels_last,
        },
        command=environment()["command"],
        data_sha256=data_sha256,
    )
