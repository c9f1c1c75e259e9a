"""`Trainer`: runs one training run: its data, its `RunPlan`, its `TrainingState` and its loop.

    trainer = Trainer(cfg, RunDir(path), dist, device, resume=False)
    summary = trainer.fit()

The trainer owns what it builds and reads nothing it does not own: the `TrainingState` (model,
optimizer, EMA, scaler, schedule, position, best so far: reslab.train.state) is the one object a
checkpoint saves and restores (`state_dict` / `load_state_dict`); the `RunPlan` (steps, watched
part, precision, class weights: reslab.train.plan) is decided once at the start.

`fit` reads top to bottom: epochs of `train_step`s, each followed by what the settings ask at
that step (a shared stop decision, a mid-epoch evaluation, a checkpoint), an evaluation and a
checkpoint at each epoch end, and at the end the final evaluation, weights and summary. Every
file goes into the run directory through `RunDir`; checkpoints are `reslab.checkpoint`'s.

Every evaluation is printed (one line), logged, and taken in by `BestSoFar`, which follows the
top-1 error of the watched part (`RunPlan.watch`): under train.keep=best the weights of each new
best go to best.safetensors and the run ends with them; train.early_stop=N ends the run after N
evaluations in a row without a lower error. The best record (and under keep=best its weights) is
part of every checkpoint, so a resumed run goes on with the same best.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.checkpoint import Checkpoint, RunRecord, rng_states, save_checkpoint
from reslab.config import Config, budget_seconds, save_config
from reslab.data.datasets import dataset_sha256
from reslab.data.spec import EvalBatches
from reslab.device import resolve_precision
from reslab.errors import CheckpointError, ConfigError, ReslabError
from reslab.evaluation import evaluate
from reslab.machine import command_seconds
from reslab.records import to_json
from reslab.rundir import RunDir, RunSummary
from reslab.train.budget import Measuring, Speed, apply_budget, measure_speed, plan_budget, rng_kept
from reslab.train.build import Data, apply_depth_rules, build_data, build_model, eval_subsets
from reslab.train.distributed import (
    Dist,
    agree_on_stop,
    combine_train_metrics,
    gather_to_rank0,
    on_rank0,
    state_digest,
)
from reslab.train.finish import EndSettings, end_checks
from reslab.train.optim import build_ema, build_optimizer
from reslab.train.plan import RunPlan
from reslab.train.results import Kept, RunEnd, run_summary, weights_meta
from reslab.train.resume import resume_from_newest
from reslab.train.runlog import RunLog, class_weights_line, eval_line, setup_line, watch_line
from reslab.train.schedule import Schedule
from reslab.train.signals import StopOnSignal
from reslab.train.state import Position, TrainingState
from reslab.train.step import EpochMeter, StepResult, StepSettings, train_step
from reslab.weights import WeightsMeta, read_meta, save_weights


class NonFiniteError(ReslabError):
    """A NaN or inf loss/gradient stopped the run."""


class Trainer:
    """Runs one training run: builds its data, `RunPlan` and `TrainingState` (or resumes the state
    from a checkpoint), then the loop. It owns those and its run log; nothing else assigns them."""

    def __init__(self, cfg: Config, run: RunDir, dist: Dist, device: torch.device, *, resume: bool) -> None:
        self.cfg, self.run, self.dist, self.device = cfg, run, dist, device
        self.wall_start, self.started = time.perf_counter(), time.monotonic()
        self.data = self._build_data()
        apply_depth_rules(cfg)
        precision = resolve_precision(cfg.train.precision, device)  # "auto": this machine's
        self.during = eval_subsets(self.data.evals, cfg.train.eval_images)  # the batches evaluations use mid-run
        self.budget_line = ""  # what a time budget came to (said at the start)
        if not resume and cfg.train.budget and not cfg.train.budget_steps:
            self.budget_line = self._fit_budget(precision)
        self.plan = RunPlan.of(cfg, self.data, precision)
        self.training = self._build_state(self.plan)
        self.settings = self._step_settings(self.plan)
        self.history: list[dict[str, Any]] = []  # this process's evaluations, oldest first
        self.last_saved = -1  # step of the newest checkpoint this process took part in
        if resume:
            self._resume()
        elif dist.main:
            save_config(cfg, run.config)
        self.train_model = self._wrap(self.model)
        self.log = RunLog(
            run, dist.main, self.total, self.state.step, cfg.train.progress, self.data.synthetic, resumed=resume
        )
        self.stopper = StopOnSignal()

    def _build_data(self) -> Data:
        # One process per machine decodes (or downloads) the dataset into the cache first; the
        # others then read that cache instead of writing it at the same time.
        dist = self.dist
        if dist.world_size > 1 and dist.local_rank != 0:
            torch.distributed.barrier()
        data = build_data(self.cfg, self.device, dist)
        if dist.world_size > 1 and dist.local_rank == 0:
            torch.distributed.barrier()
        return data

    def _step_settings(self, plan: RunPlan) -> StepSettings:
        cfg, weights = self.cfg, plan.class_weights
        return StepSettings(
            precision=plan.precision,
            label_smoothing=cfg.optim.label_smoothing,
            grad_clip=cfg.optim.grad_clip,
            skip_nonfinite=cfg.train.on_nonfinite == "skip",
            accum_steps=cfg.train.accum_steps,
            class_weights=weights.to(self.device) if weights is not None else None,
        )

    def _fit_budget(self, precision: str) -> str:
        """train.budget on a new run: measure this run's work (`measure_speed`), choose the steps on
        rank 0 and write them into the config (reslab.train.budget); returns the line that says what
        was decided."""
        cfg = self.cfg
        speed = self.measure_speed(precision, budget_seconds(cfg.train.budget))
        steps_per_epoch = len(self.data.train)  # as RunPlan counts them
        budget = on_rank0(self.dist, lambda: plan_budget(cfg, speed, steps_per_epoch, command_seconds(self.started)))
        apply_budget(cfg, budget, steps_per_epoch)
        return budget.line()

    def measure_speed(self, precision: str, budget_s: float) -> Speed:
        """This run's steps, an evaluation of each part and a checkpoint write, timed on a throwaway
        copy of its network with every RNG put back after (reslab.train.budget.measure_speed);
        `budget_s` sets how long the steps are timed (MEASURE_SHARE of it)."""
        cfg = self.cfg
        if cfg.train.compile:
            raise ConfigError(
                "train.budget measures the run's steps at its start, and torch.compile's one-off compile "
                "time cannot be measured there: use train.compile=false with a budget, or train.epochs"
            )
        probe_plan = RunPlan.of(cfg, self.data, precision)
        during = {part: len(self.during[part]) / max(1, len(b)) for part, b in self.data.evals.items()}
        with rng_kept():
            probe = self._build_state(probe_plan)
            model, settings = self._wrap(probe.model), replace(self._step_settings(probe_plan), lr=cfg.optim.lr)
            model.train()
            return measure_speed(
                lambda batch: train_step(model, probe.optimizer, batch, settings, probe.scaler),
                probe,
                self.data,
                Measuring(cfg, self.device, self.dist, precision, probe_plan.watch, self.run.path, budget_s, during),
            )

    def _build_state(self, plan: RunPlan) -> TrainingState:
        cfg = self.cfg
        model = build_model(cfg, self.data).to(self.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.dist.world_size > 1 and cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        schedule = Schedule(cfg.schedule, cfg.optim.lr, plan.total, steps_per_epoch=plan.steps_per_epoch)
        return TrainingState(
            model,
            build_optimizer(model, cfg.optim),
            schedule,
            ema=build_ema(model, cfg.optim.ema_decay),
            scaler=torch.amp.GradScaler(self.device.type) if plan.precision == "fp16" else None,
        )

    def _resume(self) -> None:
        """Continue from the newest usable checkpoint (none yet: from step 0 with the saved config)."""
        checkpoint = resume_from_newest(self.run, self.dist, self.training, self.cfg, self.data.train.order, self.total)
        if checkpoint is None:
            return
        self.wall_start -= checkpoint.elapsed
        # The checkpoint holds this very step: writing it again would replace its checksum file before
        # the file itself, and a kill between the two would leave the pair mismatched.
        self.last_saved = checkpoint.step
        on_rank0(self.dist, self._restore_best_file)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the steps run: DDP under torchrun, compiled when asked."""
        if self.dist.world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        return torch.compile(model) if self.cfg.train.compile else model

    # ---- what the run owns, by name -------------------------------------------------------------

    @property
    def state(self) -> Position:
        """Where the run stands (step, epoch, batch)."""
        return self.training.position

    @property
    def model(self) -> nn.Module:
        return self.training.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.training.optimizer

    @property
    def schedule(self) -> Schedule:
        return self.training.schedule

    @property
    def ema(self) -> torch.optim.swa_utils.AveragedModel | None:
        return self.training.ema

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.training.scaler

    @property
    def eval_model(self) -> nn.Module:
        """What evaluations (and the final weights) use: the EMA copy when there is one."""
        return self.training.eval_model

    @property
    def total(self) -> int:
        return self.plan.total

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def precision(self) -> str:
        return self.plan.precision

    @property
    def watch(self) -> str | None:
        return self.plan.watch

    @property
    def stopping_early(self) -> bool:
        """train.early_stop=N and the last N evaluations found no lower watched top-1 error."""
        return 0 < self.cfg.train.early_stop <= self.training.best.stale

    # ---- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to the end; returns the summary, or {"stopped": SIGNAL, "step", "run_dir"} when a
        signal stopped the run (a checkpoint was written)."""
        try:
            with self.stopper:
                self._announce()
                while self.state.step < self.total and not self.stopping_early:
                    self._agree_on_stop()
                    if self.state.stop_requested:
                        break
                    self._train_epoch()
                if self.state.stop_requested and self.state.step < self.total and not self.stopping_early:
                    return self._stop()
            return self._finish()
        finally:
            self.log.close()

    def _announce(self) -> None:
        """What the run trains on and how, before its first step."""
        for line in self.data.summary_lines():
            self.log.message(line)
        params = sum(p.numel() for p in self.model.parameters())
        if self.budget_line:
            self.log.message(self.budget_line)
        self.log.message(setup_line(self.cfg, params, self.total, self.steps_per_epoch))
        if self.plan.class_weights is not None:
            counts = self.data.train.class_counts()
            self.log.message(class_weights_line(counts, self.plan.class_weights, self.data.classes))
        if self.watch and (self.cfg.train.keep == "best" or self.cfg.train.early_stop):
            self.log.message(watch_line(self.watch, self.cfg.train.keep, self.cfg.train.early_stop))

    def _train_epoch(self) -> None:
        s = self.state
        meter = EpochMeter(self.device)
        self.train_model.train()
        for batch in self.data.train.epoch(s.epoch, start_batch=s.batch_in_epoch):
            if s.step >= self.total or s.stop_requested or self.stopping_early:
                break
            if self._step(batch, meter):
                self._after_step()
        if s.batch_in_epoch >= self.steps_per_epoch:  # the epoch finished (even if a stop is pending)
            self._end_epoch(combine_train_metrics(self.dist, meter.result(), self.device))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], meter: EpochMeter) -> bool:
        """One optimizer step; False when it was skipped for a non-finite value."""
        s = self.state
        lr = self.schedule.lr(s.step)
        result = train_step(self.train_model, self.optimizer, batch, replace(self.settings, lr=lr), self.scaler)
        if result.nonfinite:
            self._skip(result)
            return False
        if self.ema is not None and s.step % self.cfg.optim.ema_every == 0:  # steps 0, N, 2N, ...
            self.ema.update_parameters(self.train_model)
        meter.add(result)
        s.step += 1
        s.batch_in_epoch += 1
        if self.schedule.watches_train_error:
            self.schedule.observe_train_error(s.step, result.wrong.item() / result.size)
        self.log.step(s, {"loss": result.loss_value, "lr": lr, "batch": result.size})
        return True

    def _after_step(self) -> None:
        """What the settings ask after a step: a shared stop decision, a mid-epoch evaluation, a
        checkpoint. The evaluation comes first, so the checkpoint holds the schedule state after
        it; an epoch's last step is saved by the epoch end, after its evaluation."""
        s, t = self.state, self.cfg.train
        self._agree_on_stop()
        if t.eval_every > 0 and s.step % t.eval_every == 0 and s.step < self.total:
            self._record_eval(self.evaluate())
            self.train_model.train()
        if (
            t.checkpoint_every
            and s.step % t.checkpoint_every == 0
            and s.step < self.total
            and s.batch_in_epoch < self.steps_per_epoch
        ):
            self.save()

    def _end_epoch(self, train_metrics: dict[str, float]) -> None:
        s = self.state
        s.epoch += 1
        s.batch_in_epoch = 0
        if self.cfg.train.eval_every == 0 or s.step >= self.total:
            record = self.evaluate()
            record.update(
                {
                    "train_loss": train_metrics["loss"],
                    "train_error": train_metrics["error"],
                    "train_img_per_s": round(train_metrics["img_per_s"], 1),
                }
            )
            self._record_eval(record)
        if s.step < self.total:
            self.save()

    def _skip(self, result: StepResult) -> None:
        """A non-finite step: stop the run, or count the skip (train.on_nonfinite=skip)."""
        s, t = self.state, self.cfg.train
        value = result.loss_value if result.nonfinite == "loss" else result.grad_norm.item()
        value_text = value if not math.isfinite(value) else "on another process"
        where = (
            f"non-finite {result.nonfinite} ({value_text}) at step {s.step} (epoch {s.epoch}, batch {s.batch_in_epoch})"
        )
        kept = self._kept_checkpoint_note()
        if not self.settings.skip_nonfinite:
            raise NonFiniteError(
                f"{where}; stopped. {kept}; lower optim.lr, set optim.grad_clip, or train.on_nonfinite=skip"
            )
        if s.skipped_steps >= t.max_skips:
            raise NonFiniteError(
                f"{where}; stopped after {s.skipped_steps} skipped steps (train.max_skips="
                f"{t.max_skips}). {kept}; lower optim.lr or set optim.grad_clip"
            )
        s.skipped_steps += 1
        s.batch_in_epoch += 1
        self.log.message(f"skipped: {where} ({s.skipped_steps} of at most {t.max_skips} skips)")

    def _kept_checkpoint_note(self) -> str:
        checkpoints = self.run.list_checkpoints()
        if not checkpoints:
            return "No checkpoint had been written yet"
        return f"The last good checkpoint ({checkpoints[-1].name}) is untouched"

    def _agree_on_stop(self) -> None:
        agree_on_stop(self.dist, self.state, self.schedule.state, self.stopper.pending, self.device)

    # ---- evaluation ------------------------------------------------------------------------------

    @property
    def evaluated_parts(self) -> list[str]:
        """The parts an evaluation during training covers: all, or the watched one (train.eval_parts)."""
        if self.cfg.train.eval_parts == "watched" and self.watch:
            return [self.watch]
        return list(self.data.evals)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the parts (`evaluated_parts`; rank 0: the evaluation sets are not sharded; the record
        is shared) and let the schedule observe the validation loss (the test loss without a val part)."""
        s = self.state

        def compute() -> dict[str, Any]:
            record: dict[str, Any] = {
                "step": s.step,
                "epoch": round(s.step / self.steps_per_epoch, 4),
                "elapsed_s": round(time.perf_counter() - self.wall_start, 2),
            }
            last = s.step >= self.total  # the last evaluation covers every image (train.eval_images)
            parts = self._evaluate_parts(
                self.eval_model, self.cfg.train.tta_flip, self.evaluated_parts, None if last else self.during
            )
            subset = not last and self.during is not self.data.evals
            return {**record, **parts, **({"eval_images": self.cfg.train.eval_images} if subset else {})}

        record = on_rank0(self.dist, compute)
        if self.watch:
            self.schedule.observe_eval(record[f"{self.watch}_loss"])
        return record

    def _evaluate_parts(
        self, model: nn.Module, tta_flip: bool, parts: list[str], evals: dict[str, EvalBatches] | None = None
    ) -> dict[str, float]:
        """PART_top1_error, PART_top5_error and PART_loss of each of `parts`, on `evals` (default: every image)."""
        record = {}
        for part in parts:
            batches = (evals or self.data.evals)[part]
            m = evaluate(
                model,
                batches.epoch(0),
                len(self.data.classes),
                device=self.device,
                precision=self.precision,
                tta_flip=tta_flip,
            )
            record.update({f"{part}_top1_error": m["top1_error"], f"{part}_top5_error": m["top5_error"]})
            record[f"{part}_loss"] = m["loss"]
        return record

    def _record_eval(self, record: dict[str, Any]) -> None:
        """An evaluation of this run: taken in as a possible new best, logged and printed."""
        self._observe(record)
        self.log.eval(record)
        self.log.message(eval_line(record, self.total, self.watch, self.training.best))
        self.history.append(record)

    def _observe(self, record: dict[str, Any]) -> None:
        """Let `BestSoFar` take in an evaluation of the current weights; under train.keep=best a new
        best's weights are copied (for checkpoints and the end) and written to best.safetensors."""
        best = self.training.best
        if not self.watch or not best.observe(record["step"], record[f"{self.watch}_top1_error"], record):
            return
        if self.cfg.train.keep == "best":
            self.training.keep_best_weights()
            on_rank0(self.dist, lambda: self._save_weights(self.run.best_weights, self.eval_model, self._best_meta()))

    def _meta(self, record: dict[str, Any], step: int | None = None) -> WeightsMeta:
        return weights_meta(self.cfg, self.data, self.precision, self.data_sha256, record, step)

    def _best_meta(self) -> WeightsMeta:
        return self._meta(self.training.best.record, self.training.best.step)

    def _restore_best_file(self) -> None:
        """On resume (rank 0): best.safetensors must hold the checkpoint's best. A file written after
        the checkpoint by the process that was stopped holds a later step: write it again."""
        best = self.training.best
        if self.cfg.train.keep != "best" or self.training.best_weights is None:
            return
        try:
            if read_meta(self.run.best_weights).metrics.get("step") == best.step:
                return
        except ReslabError:  # missing or damaged
            pass
        self._save_weights(self.run.best_weights, self.training.best_model(), self._best_meta())
        print(f"wrote {self.run.best_weights.name} again: the best so far is step {best.step}'s", file=sys.stderr)

    # ---- checkpoints -----------------------------------------------------------------------------

    def save(self) -> None:
        """Write a checkpoint of the current step (once per step)."""
        if self.last_saved == self.state.step:
            return
        # RNG states and data order are per process; rank 0 collects them and writes the file.
        ranks = gather_to_rank0(self.dist, (rng_states(), self.data.train.order(self.state.epoch)))

        def write() -> None:
            from reslab import __version__

            record = RunRecord(
                rng=[rng for rng, _ in ranks],
                data_order=[order for _, order in ranks],
                config=self.cfg.to_dict(),
                elapsed=time.perf_counter() - self.wall_start,
                world_size=self.dist.world_size,
                reslab_version=__version__,
            )
            payload = Checkpoint.of(self.training.state_dict(), record).to_payload()
            try:
                save_checkpoint(self.run, self.state.step, payload, keep=self.cfg.train.keep_checkpoints)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc} Resume with: reslab train --resume {self.run}") from exc

        on_rank0(self.dist, write)
        self.last_saved = self.state.step

    # ---- the end ---------------------------------------------------------------------------------

    def _stop(self) -> dict[str, Any]:
        s = self.state
        self.save()
        self.log.message(
            f"stopped by {s.stop_requested} at step {s.step}/{self.total}; checkpoint "
            f"written. Resume with: reslab train --resume {self.run}"
        )
        return {"stopped": s.stop_requested, "step": s.step, "run_dir": str(self.run)}

    def _finish(self) -> dict[str, Any]:
        s, best = self.state, self.training.best
        if s.batch_in_epoch and best.seen_step != s.step:  # an iteration budget ended mid-epoch
            self._record_eval(self.evaluate())
        final = self.history[-1] if self.history else self._logged_final() or self.evaluate()
        if best.seen_step < final["step"]:  # a checkpoint of an older reslab, resumed at the end
            self._observe(final)
        if self.stopped_early:
            self.log.message(
                f"stopped early at step {s.step}/{self.total}: {best.stale} evaluations without a lower "
                f"{self.watch} top-1 error than step {best.step}'s (train.early_stop={self.cfg.train.early_stop})"
            )
        self.save()
        digests = None
        if self.dist.world_size > 1:
            # BN statistics are rank 0's (DDP broadcasts them before each forward, but the last
            # forward updated each rank's own); then check that every rank holds the same weights.
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)
            digests = gather_to_rank0(self.dist, state_digest(self.model))
        kept = on_rank0(self.dist, lambda: self._kept(final))
        for line in kept.checks.lines() if kept.checks is not None else []:
            self.log.message(line)
        end = RunEnd(
            wall_time_s=time.perf_counter() - self.wall_start,
            stopped_early=self.stopped_early,
            world_size=self.dist.world_size,
            backend=self.dist.backend,
            digests=digests,
            kept=kept,
        )
        summary = run_summary(self.run, self.cfg, self.data, self.plan, self.training, final, end)
        on_rank0(self.dist, lambda: self._write_results(kept.meta, summary, digests))
        return to_json(summary)  # as summary.json holds it

    def _kept_model(self) -> nn.Module:
        """The network the run ends with: the best evaluation's (train.keep=best), else the last."""
        if self.cfg.train.keep == "best" and self.training.best_weights is not None:
            return self.training.best_model()
        return self.eval_model

    def _kept(self, final: dict[str, Any]) -> Kept:
        """(rank 0) The kept weights' evaluation and metadata, after the end-of-run checks on val
        (reslab.train.finish): flip TTA as decided there (the parts evaluated again when that changed
        it), the temperature fitted there."""
        cfg, model = self.cfg, self._kept_model()
        best = cfg.train.keep == "best" and self.training.best_weights is not None
        record, step = (self.training.best.record, self.training.best.step) if best else (final, None)
        checks = None
        if "val" in self.data.evals and (cfg.train.calibrate or (cfg.train.decide_tta and cfg.train.tta_flip)):
            settings = EndSettings(
                tta_flip=cfg.train.tta_flip,
                decide_tta=cfg.train.decide_tta,
                calibrate=cfg.train.calibrate,
                precision=self.precision,
                dataset=self.data.name,
                val_part=self.data.source.describe_val(),
            )
            checks = end_checks(model, self.data.evals["val"], self.device, settings)
        tta = checks.tta_flip if checks is not None and checks.tta_flip is not None else cfg.train.tta_flip
        if tta != cfg.train.tta_flip or "eval_images" in record:  # the weights' numbers, on every image, as used
            kept = {k: v for k, v in record.items() if k != "eval_images"}
            record = {**kept, **self._evaluate_parts(model, tta, list(self.data.evals))}
        else:  # train.eval_parts=watched: the other parts once, now, on the kept weights
            missing = [part for part in self.data.evals if f"{part}_top1_error" not in record]
            record = {**record, **self._evaluate_parts(model, tta, missing)}
        meta = weights_meta(cfg, self.data, self.precision, self.data_sha256, record, step, tta_flip=tta)
        if checks is not None and checks.fit is not None:
            meta = replace(meta, temperature=checks.temperature, temperature_fit=checks.fit.as_meta())
        return Kept(meta=meta, record=record, checks=checks)

    def _logged_final(self) -> dict[str, Any] | None:
        """The final evaluation a run resumed at its last step logged before it was stopped, with the
        training metrics of its last epoch (which cannot be measured again), or None."""
        s = self.state

        def read() -> dict[str, Any] | None:
            records = self.run.read_metrics()
            if not records or records[-1]["step"] != s.step:
                return None
            return {k: v for k, v in records[-1].items() if isinstance(v, (int, float))}  # less RunLog's notes

        return on_rank0(self.dist, read)

    @property
    def stopped_early(self) -> bool:
        return self.stopping_early and self.state.step < self.total

    @functools.cached_property
    def data_sha256(self) -> str:
        """Of the dataset's files: computed once, as keep=best writes weights at every new best."""
        return dataset_sha256(self.cfg.data.dataset, self.cfg.data.data_dir, listing=not self.cfg.data.in_memory)

    def _write_results(self, meta: WeightsMeta, summary: RunSummary, digests: list[str] | None) -> None:
        if digests and len(set(digests)) > 1:
            self.log.message(
                f"warning: the {self.dist.world_size} processes ended with different weights; rank 0's are saved"
            )
        self._save_weights(self.run.weights, self._kept_model(), meta)
        with self._writing(self.run.summary):
            self.run.write_summary(summary)

    def _save_weights(self, path: Path, model: nn.Module, meta: WeightsMeta) -> None:
        with self._writing(path):
            save_weights(path, model, meta, self.data.stats)

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """A failed write (a full disk) as one line that says the run can be resumed."""
        try:
            yield
        except OSError as exc:
            raise CheckpointError(
                f"could not write {path.name} to {self.run} ({exc.strerror or exc}); the last "
                f"checkpoint is intact: free some space, then `reslab train --resume {self.run}`"
            ) from exc
