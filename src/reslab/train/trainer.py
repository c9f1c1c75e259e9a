"""`Trainer`: one run's model, optimizer, EMA, scaler, schedule, data and run log, and its step loop.

    trainer = Trainer(cfg, RunDir(path), dist, device, resume=False)
    summary = trainer.fit()

`fit` reads top to bottom: epochs of `train_step`s, each followed by what the settings ask at
that step (a shared stop decision, a mid-epoch evaluation, a checkpoint), an evaluation and a
checkpoint at each epoch end, and at the end the final evaluation, weights and summary. Every
file goes into the run directory through `RunDir`; checkpoints are `reslab.checkpoint`'s.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from reslab.atomic import atomic_write_bytes
from reslab.checkpoint import rng_states, save_checkpoint
from reslab.config import Config, save_config
from reslab.data.datasets import dataset_sha256
from reslab.errors import CheckpointError, ConfigError, ReslabError
from reslab.evaluation import evaluate
from reslab.machine import environment
from reslab.rundir import RunDir
from reslab.train.build import apply_depth_rules, build_data, build_model
from reslab.train.distributed import (
    Dist,
    agree_on_stop,
    combine_train_metrics,
    gather_to_rank0,
    on_rank0,
    state_digest,
)
from reslab.train.optim import build_ema, build_optimizer
from reslab.train.resume import make_checkpoint, resume_from_checkpoint
from reslab.train.runlog import RunLog
from reslab.train.schedule import Schedule
from reslab.train.signals import StopOnSignal
from reslab.train.state import TrainState
from reslab.train.step import StepResult, StepSettings, train_step
from reslab.weights import WeightsMeta, save_weights


class NonFiniteError(ReslabError):
    """A NaN or inf loss/gradient stopped the run."""


class EpochMeter:
    """Running loss, error and throughput of the steps taken in one epoch."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.wrong_sum = torch.zeros((), device=device)
        self.images, self.start = 0, time.perf_counter()

    def add(self, result: StepResult) -> None:
        self.loss_sum += result.loss * result.size
        self.wrong_sum += result.wrong
        self.images += result.size

    def result(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.start
        n = max(self.images, 1)
        return {
            "loss": self.loss_sum.item() / n,
            "error": self.wrong_sum.item() / n,
            "images": self.images,
            "seconds": seconds,
            "img_per_s": self.images / max(seconds, 1e-9),
        }


def total_steps_of(cfg: Config, steps_per_epoch: int) -> int:
    if cfg.train.iterations > 0:
        return cfg.train.iterations
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch))


class Trainer:
    def __init__(self, cfg: Config, run: RunDir, dist: Dist, device: torch.device, *, resume: bool) -> None:
        self.cfg, self.run, self.dist, self.device = cfg, run, dist, device
        self.wall_start = time.perf_counter()
        # One process per machine decodes (or downloads) the dataset into the cache first; the
        # others then read that cache instead of writing it at the same time.
        if dist.world_size > 1 and dist.local_rank != 0:
            torch.distributed.barrier()
        self.data = build_data(cfg, device, dist)
        if dist.world_size > 1 and dist.local_rank == 0:
            torch.distributed.barrier()
        apply_depth_rules(cfg)
        self.model = build_model(cfg, self.data).to(device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if dist.world_size > 1 and cfg.train.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.ema = build_ema(self.model, cfg.optim.ema_decay)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
        self.steps_per_epoch = len(self.data.train)
        self.total = total_steps_of(cfg, self.steps_per_epoch)
        self.schedule = Schedule(cfg.schedule, cfg.optim.lr, self.total)
        self.settings = StepSettings(
            precision=cfg.train.precision,
            label_smoothing=cfg.optim.label_smoothing,
            grad_clip=cfg.optim.grad_clip,
            skip_nonfinite=cfg.train.on_nonfinite == "skip",
        )
        self.state = TrainState()
        self.history: list[dict[str, Any]] = []
        self.last_saved = -1  # step of the newest checkpoint this process took part in
        if resume:
            resume_from_checkpoint(self)
        elif dist.main:
            save_config(cfg, run.config)
        self.train_model = self._wrap(self.model)
        self.log = RunLog(run, dist.main, self.total, self.state.step, cfg.train.progress, self.data.synthetic)
        self.stopper = StopOnSignal()

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the steps run: DDP under torchrun, compiled when asked."""
        if self.dist.world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        return torch.compile(model) if self.cfg.train.compile else model

    @property
    def eval_model(self) -> nn.Module:
        """What evaluations (and the final weights) use: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # ---- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to the end; returns the summary, or {"stopped": SIGNAL, "step", "run_dir"} when a
        signal stopped the run (a checkpoint was written)."""
        try:
            with self.stopper:
                while self.state.step < self.total:
                    self._agree_on_stop()
                    if self.state.stop_requested:
                        break
                    self._train_epoch()
                if self.state.stop_requested and self.state.step < self.total:
                    return self._stop()
            return self._finish()
        finally:
            self.log.close()

    def _train_epoch(self) -> None:
        s = self.state
        meter = EpochMeter(self.device)
        self.train_model.train()
        for batch in self.data.train.epoch(s.epoch, start_batch=s.batch_in_epoch):
            if s.step >= self.total or s.stop_requested:
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
        if self.ema is not None:
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
            self.log.eval(self.evaluate())
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
            self.log.eval(record)
            self.history.append(record)
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

    def evaluate(self) -> dict[str, Any]:
        """Evaluate every part (rank 0: the evaluation sets are not sharded; the record is shared)
        and let the schedule observe the validation loss (the test loss without a val part)."""
        s = self.state

        def compute() -> dict[str, Any]:
            record: dict[str, Any] = {
                "step": s.step,
                "epoch": round(s.step / self.steps_per_epoch, 4),
                "elapsed_s": round(time.perf_counter() - self.wall_start, 2),
            }
            for part, batches in self.data.evals.items():
                m = evaluate(
                    self.eval_model,
                    batches.epoch(0),
                    len(self.data.classes),
                    device=self.device,
                    precision=self.cfg.train.precision,
                    tta_flip=self.cfg.train.tta_flip,
                )
                record.update(
                    {
                        f"{part}_top1_error": m["top1_error"],
                        f"{part}_top5_error": m["top5_error"],
                        f"{part}_loss": m["loss"],
                    }
                )
            return record

        record = on_rank0(self.dist, compute)
        watch = "val" if "val" in self.data.evals else "test"
        self.schedule.observe_eval(record[f"{watch}_loss"])
        return record

    # ---- checkpoints -----------------------------------------------------------------------------

    def save(self) -> None:
        """Write a checkpoint of the current step (once per step)."""
        if self.last_saved == self.state.step:
            return
        # RNG states and data order are per process; rank 0 collects them and writes the file.
        ranks = gather_to_rank0(self.dist, (rng_states(), self.data.train.order(self.state.epoch)))

        def write() -> None:
            payload = make_checkpoint(self, ranks).to_payload()
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
        s = self.state
        if s.batch_in_epoch:  # an iteration budget that ended mid-epoch: evaluate once more
            record = self.evaluate()
            self.log.eval(record)
            self.history.append(record)
        final = self.history[-1] if self.history else self._logged_final() or self.evaluate()
        self.save()
        digests = None
        if self.dist.world_size > 1:
            # BN statistics are rank 0's (DDP broadcasts them before each forward, but the last
            # forward updated each rank's own); then check that every rank holds the same weights.
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)
            digests = gather_to_rank0(self.dist, state_digest(self.model))
        summary = self._summary(final, digests)
        on_rank0(self.dist, lambda: self._write_results(final, summary, digests))
        return summary

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

    def _summary(self, final: dict[str, Any], digests: list[str] | None) -> dict[str, Any]:
        s, dist = self.state, self.dist
        summary = {
            "run_dir": str(self.run),
            "model": self.cfg.model.name,
            "dataset": self.data.name,
            "synthetic_data": self.data.synthetic,
            "steps": s.step,
            "epochs": round(s.step / self.steps_per_epoch, 3),
            "wall_time_s": round(time.perf_counter() - self.wall_start, 2),
            "final": final,
            "skipped_steps": s.skipped_steps,
            "environment": environment(),
        }
        if dist.world_size > 1:
            summary["distributed"] = {
                "world_size": dist.world_size,
                "backend": dist.backend,
                "weights_sha256_per_rank": digests,
            }
        return summary

    def weights_meta(self, final: dict[str, Any]) -> WeightsMeta:
        """What the final weights record: architecture, classes, preprocessing, data, metrics, command."""
        cfg, data = self.cfg, self.data
        metrics = {k: v for k, v in final.items() if k.endswith(("error", "loss"))}
        metrics["eval_tta_flip"] = float(cfg.train.tta_flip)  # how the test metrics were measured
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
                "precision": cfg.train.precision,
                "channels_last": cfg.train.channels_last,
            },
            command=environment()["command"],
            data_sha256=dataset_sha256(cfg.data.dataset, cfg.data.data_dir, listing=not cfg.data.in_memory),
        )

    def _write_results(self, final: dict[str, Any], summary: dict[str, Any], digests: list[str] | None) -> None:
        if digests and len(set(digests)) > 1:
            self.log.message(
                f"warning: the {self.dist.world_size} processes ended with different weights; rank 0's are saved"
            )
        try:
            save_weights(self.run.weights, self.eval_model, self.weights_meta(final), self.data.stats)
            atomic_write_bytes(self.run.summary, json.dumps(summary, indent=2).encode())
        except OSError as exc:
            raise CheckpointError(
                f"could not write the final weights to {self.run} ({exc.strerror or exc}); the last "
                f"checkpoint is intact: free some space, then `reslab train --resume {self.run}`"
            ) from exc


def check_sync_bn(cfg: Config, dist: Dist, device: torch.device) -> None:
    if dist.world_size > 1 and cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError(
            "train.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); "
            "leave it off for CPU/gloo runs"
        )
