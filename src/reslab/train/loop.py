"""One training run from a resolved `Config`: data, model, the loop, evaluation, checkpoints, logs.

Run directory layout:
    config.yaml           the resolved configuration
    metrics.jsonl         one JSON line per evaluation
    tb/                   TensorBoard event files
    checkpoints/          ckpt-STEP.pt (+ .sha256), newest K kept; *.damaged: set aside by a resume
    weights.safetensors   final weights with preprocessing and metrics (for eval/predict/export)
    summary.json          final metrics, wall time, software and hardware
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.config import Config, apply_settings, config_from_dict, parse_override, save_config
from reslab.data import InMemoryBatches, NormStats, load_cached, train_val_split
from reslab.errors import CheckpointError, ConfigError, ReslabError
from reslab.machine import cpu_model
from reslab.models import ResNet, create_model
from reslab.train import checkpoint as ckpt
from reslab.train.distributed import (
    Dist,
    agree_on_stop,
    combine_train_metrics,
    gather_to_rank0,
    init_distributed,
    on_rank0,
    state_digest,
)
from reslab.train.engine import StepContext, TrainState, evaluate, train_one_epoch
from reslab.train.optim import build_ema, build_optimizer
from reslab.train.runlog import RunLog
from reslab.train.schedule import ScheduleState
from reslab.weights import WeightsMeta, save_weights

# ---- Environment ---------------------------------------------------------------------------------


def pick_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
        if dist.world_size > 1:
            name = f"cuda:{dist.local_rank}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def set_determinism(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def environment() -> dict[str, Any]:
    from reslab import __version__

    return {
        "reslab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


# ---- Data ----------------------------------------------------------------------------------------


@dataclass
class Data:
    train: InMemoryBatches  # or FolderBatches (data.in_memory=false), the same interface
    evals: dict[str, InMemoryBatches]  # "val" (paper split) and/or "test"
    classes: list[str]
    in_chans: int
    image_size: int
    stats: NormStats
    name: str
    synthetic: bool


def build_data(cfg: Config, device: torch.device, dist: Dist) -> Data:
    d = cfg.data
    if cfg.train.batch_size % dist.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} must divide by the {dist.world_size} processes")
    if not d.in_memory:
        return build_folder_data(cfg, device, dist)
    load = dict(cache_dir=d.cache_dir, download=d.download, image_size=d.image_size, synthetic_size=d.synthetic_size)
    train = load_cached(d.dataset, "train", d.data_dir, **load)
    test = load_cached(d.dataset, "test", d.data_dir, **load)
    evals_ds = {"test": test}
    if d.split == "paper":
        if d.val_size >= len(train):
            raise ConfigError(f"data.val_size={d.val_size} leaves no training images ({len(train)} in all)")
        train, val = train_val_split(train, d.val_size, seed=cfg.train.seed)
        evals_ds = {"val": val, "test": test}
    common = dict(device=device, channels_last=cfg.train.channels_last)
    train_batches = InMemoryBatches(
        train,
        cfg.train.batch_size // dist.world_size,
        train=True,
        augment=d.augment,
        pad=d.pad,
        normalize=d.normalize,
        seed=cfg.train.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        **common,
    )
    eval_bs = max(256, cfg.train.batch_size)
    evals = {
        k: InMemoryBatches(ds, eval_bs, train=False, stats=train_batches.stats, normalize=d.normalize, **common)
        for k, ds in evals_ds.items()
    }
    c, h, w = train.image_shape
    return Data(train_batches, evals, list(train.classes), c, h, train_batches.stats, train.name, bool(train.synthetic))


def build_folder_data(cfg: Config, device: torch.device, dist: Dist) -> Data:
    """data.in_memory=false: an ImageFolder tree decoded in DataLoader workers (ImageNet scale);
    train/ trains, val/ is the evaluation set (reported as "test")."""
    from reslab.data.folder_batches import FolderBatches
    from reslab.data.folder_transforms import FOLDER_AUGMENT_KINDS

    d = cfg.data
    problems = []
    if d.dataset != "imagefolder":
        problems.append(f"data.dataset={d.dataset!r} (only imagefolder streams from disk; the others fit in memory)")
    if d.split != "full":
        problems.append(f"data.split={d.split!r} (use full: val/ is the evaluation set)")
    if d.augment not in FOLDER_AUGMENT_KINDS:
        problems.append(f"data.augment={d.augment!r} (valid here: {', '.join(FOLDER_AUGMENT_KINDS)})")
    if d.normalize != "channel":
        problems.append(
            f"data.normalize={d.normalize!r} (streaming normalises per channel with ImageNet's mean/std: use channel)"
        )
    if problems:
        raise ConfigError("data.in_memory=false does not fit " + "; ".join(problems))
    size = d.image_size or 224
    common = dict(
        image_size=size, workers=d.workers, seed=cfg.train.seed, device=device, channels_last=cfg.train.channels_last
    )
    root = d.data_dir or "."
    train = FolderBatches(
        root,
        "train",
        batch_size=cfg.train.batch_size // dist.world_size,
        train=True,
        augment=d.augment,
        rank=dist.rank,
        world_size=dist.world_size,
        **common,
    )
    test = FolderBatches(root, "test", batch_size=max(256, cfg.train.batch_size), train=False, augment="none", **common)
    if len(train) == 0:
        raise ConfigError(
            f"{root}: {len(train.dataset)} training images make no whole batch of "
            f"{cfg.train.batch_size}; lower train.batch_size"
        )
    return Data(train, {"test": test}, train.classes, 3, size, train.stats, "imagefolder", False)


# ---- Model ---------------------------------------------------------------------------------------


def build_model(cfg: Config, data: Data) -> ResNet:
    m = cfg.model
    options: dict[str, Any] = {"zero_init_last": m.zero_init_last}
    if m.shortcut is not None:
        options["shortcut"] = m.shortcut
    if m.drop_rate:
        options["drop_rate"] = m.drop_rate
    model = create_model(m.name, num_classes=len(data.classes), in_chans=data.in_chans, **options)
    if m.pretrained:
        load_pretrained(model, m.pretrained)
    if m.activation_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def load_pretrained(model: ResNet, source: str) -> None:
    """Weights for fine-tuning: a reslab weights file / run dir, or a torchvision file.
    The classifier is kept when its shape fits and re-initialised otherwise."""
    from reslab.models.interop import read_state_dict
    from reslab.weights import load_weights, resolve_weights

    try:
        path = resolve_weights(source)
        sd = load_weights(path)[0].state_dict() if path.suffix == ".safetensors" else read_state_dict(path)
    except ReslabError:
        sd = read_state_dict(source)
    own = model.state_dict()
    head = {k for k in sd if k.startswith("fc.")}
    if any(k in own and own[k].shape != sd[k].shape for k in head):
        sd = {k: v for k, v in sd.items() if k not in head}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConfigError(
            f"model.pretrained={source} does not fit {model.name}: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )


def data_checksum(cfg: Config) -> str:
    """SHA-256 over the dataset's source files (train and test, sorted by path), so weights name
    exactly the data they were trained on; "synthetic" for the smoke-test set. For a tree streamed
    from disk (data.in_memory=false, ImageNet scale: reading every byte again would take longer
    than an epoch) it is the SHA-256 of the listing instead: each file's path and size."""
    from reslab.data import source_files

    if cfg.data.dataset == "synthetic":
        return "synthetic"
    digest = hashlib.sha256()
    files = {
        *source_files(cfg.data.dataset, "train", cfg.data.data_dir),
        *source_files(cfg.data.dataset, "test", cfg.data.data_dir),
    }
    if not cfg.data.in_memory:
        root = Path(cfg.data.data_dir or ".")
        for path in sorted(files):
            digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
        return "listing:" + digest.hexdigest()
    for path in sorted(files):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def apply_depth_rules(cfg: Config) -> None:
    """The paper warms up only its deepest CIFAR nets (ResNet-110, 1202): drop the error-based
    warm-up for shallower models, as recipes state with schedule.warmup_min_depth."""
    from reslab.models import model_info

    if cfg.schedule.warmup_until_error > 0 and model_info(cfg.model.name).depth < cfg.schedule.warmup_min_depth:
        cfg.schedule.warmup_until_error = 0.0


# ---- The run -------------------------------------------------------------------------------------


def new_run_dir(cfg: Config, run_dir: str | None) -> Path:
    if run_dir:
        path = Path(run_dir)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(cfg.train.out_dir) / f"{stamp}-{cfg.model.name}-{cfg.data.dataset}"
    if (path / "checkpoints").is_dir() and any((path / "checkpoints").iterdir()):
        raise ConfigError(
            f"{path} already holds a run; resume it with `reslab train --resume {path}` or choose another --run-dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


# Settings that change how fast a run goes, not what it computes: a resume may change them.
RUNTIME_SETTINGS = ("train.threads", "train.progress")


def resolve_resume(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The run's saved config, with `overrides` (section.key=value) applied on top."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a reslab run directory (no config.yaml); nothing to resume")
    import yaml

    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    for text in overrides or []:
        apply_settings(cfg, parse_override(text), f"--set {text}")
    return cfg


class _StopOnSignal:
    """SIGINT/SIGTERM only record the signal (no I/O in the handler); the loop takes it up at the
    next step boundary, writes a checkpoint and exits. A second Ctrl-C quits at once."""

    def __init__(self) -> None:
        self.pending, self.previous = "", {}

    def __enter__(self) -> _StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored by whoever started us (nohup, a background job): keep it so
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.pending = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            if handler is not None:  # None: a handler installed outside Python, cannot be put back
                signal.signal(sig, handler)


def drop_metrics_after(path: Path, step: int) -> None:
    """On resume: forget evaluations logged after the checkpoint (they will be run again) and a
    line cut short by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
        except json.JSONDecodeError:
            pass
    ckpt.atomic_write_bytes(path, "".join(kept).encode())


def config_changes(saved: dict, current: dict) -> list[str]:
    """section.key of each setting that differs between a checkpoint's config and the current one."""
    return [
        f"{section}.{key}"
        for section, values in current.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if saved.get(section, {}).get(key) != value and f"{section}.{key}" not in RUNTIME_SETTINGS
    ]


def restore(
    payload: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    scaler: torch.amp.GradScaler | None,
    dist: Dist,
) -> TrainState:
    """Put a checkpoint's state back into the objects of a fresh run; returns the loop state."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if ema is not None and "ema" in payload:
        ema.load_state_dict(payload["ema"])
    if scaler is not None and "scaler" in payload:
        scaler.load_state_dict(payload["scaler"])
    same_world = payload["world_size"] == dist.world_size
    ckpt.set_rng_states(payload["rng"][dist.rank if same_world else 0])
    s = payload["state"]
    return TrainState(
        step=s["step"],
        epoch=s["epoch"],
        batch_in_epoch=s["batch_in_epoch"],
        skipped_steps=s["skipped_steps"],
        schedule=ScheduleState(**s["schedule"]),
    )


def resume_mismatches(payload: dict, cfg: Config, dist: Dist, order: torch.Tensor, epoch: int) -> list[str]:
    """Why a resumed run would not match an uninterrupted one, if it would not."""
    notes = []
    if payload["world_size"] != dist.world_size:
        notes.append(
            f"the checkpoint was written by {payload['world_size']} process(es), this run has "
            f"{dist.world_size}: it continues, but will not match an uninterrupted run exactly"
        )
    elif not torch.equal(payload["data_order"][dist.rank], order):
        notes.append(
            f"the data order of epoch {epoch} differs from the checkpoint's (another dataset "
            "or torch version?): the run will not match an uninterrupted one exactly"
        )
    changed = config_changes(payload["config"], cfg.to_dict())
    if changed:
        notes.append(f"config.yaml differs from the checkpoint's config in {', '.join(changed)}; using config.yaml")
    return notes


def total_steps_of(cfg: Config, steps_per_epoch: int) -> int:
    if cfg.train.iterations > 0:
        return cfg.train.iterations
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch))


def train(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False) -> dict[str, Any]:
    """Train per `cfg` (or resume the run in `run_dir`); returns the final summary, or
    {"stopped": SIGNAL, "step", "run_dir"} when a signal stopped it (a checkpoint was written)."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    dist = init_distributed(cfg.train.device)
    try:
        return _train(cfg, dist, run_dir, resume)
    finally:
        if dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: Config, dist: Dist, run_dir: str | Path | None, resume: bool) -> dict[str, Any]:
    from reslab import __version__

    wall_start = time.perf_counter()
    device = pick_device(cfg.train.device, dist)
    set_determinism(cfg)
    if dist.world_size > 1 and cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError(
            "train.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); "
            "leave it off for CPU/gloo runs"
        )
    if resume:
        run_path = Path(run_dir)
    else:  # every rank uses the directory rank 0 made
        run_path = on_rank0(dist, lambda: new_run_dir(cfg, str(run_dir) if run_dir else None))
    # One process per machine decodes (or downloads) the dataset into the cache first; the others
    # then read that cache instead of writing it at the same time.
    if dist.world_size > 1 and dist.local_rank != 0:
        torch.distributed.barrier()
    data = build_data(cfg, device, dist)
    if dist.world_size > 1 and dist.local_rank == 0:
        torch.distributed.barrier()
    apply_depth_rules(cfg)
    model = build_model(cfg, data).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.world_size > 1 and cfg.train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg.optim)
    ema = build_ema(model, cfg.optim.ema_decay)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
    state = TrainState(schedule=ScheduleState())
    steps_per_epoch = len(data.train)
    total = total_steps_of(cfg, steps_per_epoch)
    ckpt_dir = run_path / "checkpoints"

    if resume:

        def load() -> tuple[Path, dict, list[Path]]:
            path, payload = ckpt.load_latest_good(ckpt_dir)
            return path, payload, ckpt.set_aside_newer(ckpt_dir, path)

        # Rank 0 reads and checks the file and hands the payload to the others.
        path, payload, damaged = on_rank0(dist, load)
        state = restore(payload, model, optimizer, ema, scaler, dist)
        notes = [f"set aside damaged {p.name} as {p.name}.damaged" for p in damaged]
        notes += resume_mismatches(payload, cfg, dist, data.train.order(state.epoch), state.epoch)
        wall_start -= payload.get("elapsed", 0.0)
        if dist.main:
            for note in notes:
                print(f"warning: {note}", file=sys.stderr)
            print(f"resuming {run_path} from {path.name} (step {state.step}/{total})", file=sys.stderr)
            drop_metrics_after(run_path / "metrics.jsonl", state.step)
    elif dist.main:
        save_config(cfg, run_path / "config.yaml")

    train_model: nn.Module = model
    if dist.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    log = RunLog(run_path, dist.main, total, state.step, cfg.train.progress, data.synthetic)
    stopper = _StopOnSignal()

    def eval_model() -> nn.Module:
        return ema.module if ema is not None else model

    def run_evals(epoch_float: float) -> dict:
        """Rank 0 evaluates (the test set is not sharded) and shares the record."""

        def compute() -> dict:
            record: dict[str, Any] = {
                "step": state.step,
                "epoch": round(epoch_float, 4),
                "elapsed_s": round(time.perf_counter() - wall_start, 2),
            }
            for split, batches in data.evals.items():
                m = evaluate(
                    eval_model(),
                    batches.epoch(0),
                    len(data.classes),
                    device=device,
                    precision=cfg.train.precision,
                    tta_flip=cfg.train.tta_flip,
                )
                record.update(
                    {
                        f"{split}_top1_error": m["top1_error"],
                        f"{split}_top5_error": m["top5_error"],
                        f"{split}_loss": m["loss"],
                    }
                )
            return record

        record = on_rank0(dist, compute)
        watch = "val" if "val" in data.evals else "test"
        state.schedule.observe_eval(record[f"{watch}_loss"], cfg.schedule)
        return record

    last_saved = [-1]  # step of the newest checkpoint this process took part in

    def save() -> None:
        if last_saved[0] == state.step:
            return
        # RNG states and data order are per process; rank 0 collects them and writes the file.
        ranks = gather_to_rank0(dist, (ckpt.rng_states(), data.train.order(state.epoch)))

        def write() -> None:
            payload = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": {
                    "step": state.step,
                    "epoch": state.epoch,
                    "batch_in_epoch": state.batch_in_epoch,
                    "skipped_steps": state.skipped_steps,
                    "schedule": asdict(state.schedule),
                },
                "rng": [rng for rng, _ in ranks],
                "data_order": [order for _, order in ranks],
                "config": cfg.to_dict(),
                "elapsed": time.perf_counter() - wall_start,
                "reslab_version": __version__,
                "world_size": dist.world_size,
            }
            if ema is not None:
                payload["ema"] = ema.state_dict()
            if scaler is not None:
                payload["scaler"] = scaler.state_dict()
            try:
                ckpt.save_checkpoint(ckpt_dir, state.step, payload, keep=cfg.train.keep_checkpoints)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc} Resume with: reslab train --resume {run_path}") from exc

        on_rank0(dist, write)
        last_saved[0] = state.step

    def after_step(st: TrainState, m: dict) -> None:
        log.step(st, m)
        agree_on_stop(dist, st, stopper.pending, device)
        if cfg.train.eval_every > 0 and st.step % cfg.train.eval_every == 0 and st.step < total:
            log.eval(run_evals(st.step / steps_per_epoch))
            model.train()
        # Evaluate before saving, so the checkpoint holds the schedule state after this step's
        # evaluation; an epoch's last step is saved by the epoch end, after its evaluation.
        if (
            cfg.train.checkpoint_every
            and st.step % cfg.train.checkpoint_every == 0
            and st.step < total
            and st.batch_in_epoch < steps_per_epoch
        ):
            save()

    def on_skip(st: TrainState, what: str) -> None:
        log.message(f"skipped: {what} ({st.skipped_steps} of at most {cfg.train.max_skips} skips)")

    ctx = StepContext(
        train_model, optimizer, cfg, device, total, ema=ema, scaler=scaler, after_step=after_step, on_skip=on_skip
    )
    history = []
    try:
        with stopper:
            while state.step < total:
                agree_on_stop(dist, state, stopper.pending, device)
                if state.stop_requested:
                    break
                batches = data.train.epoch(state.epoch, start_batch=state.batch_in_epoch)
                last_train = train_one_epoch(ctx, batches, state)
                if state.batch_in_epoch >= steps_per_epoch:  # epoch finished (even if a stop is pending)
                    last_train = combine_train_metrics(dist, last_train, device)
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    if cfg.train.eval_every == 0 or state.step >= total:
                        record = run_evals(state.step / steps_per_epoch)
                        record.update(
                            {
                                "train_loss": last_train["loss"],
                                "train_error": last_train["error"],
                                "train_img_per_s": round(last_train["img_per_s"], 1),
                            }
                        )
                        log.eval(record)
                        history.append(record)
                    if state.step < total:
                        save()
            if state.stop_requested and state.step < total:
                save()
                log.message(
                    f"stopped by {state.stop_requested} at step {state.step}/{total}; checkpoint "
                    f"written. Resume with: reslab train --resume {run_path}"
                )
                return {"stopped": state.stop_requested, "step": state.step, "run_dir": str(run_path)}

        if state.batch_in_epoch:  # an iteration budget that ended mid-epoch: evaluate once more
            record = run_evals(state.step / steps_per_epoch)
            log.eval(record)
            history.append(record)
        final = history[-1] if history else run_evals(state.step / steps_per_epoch)
        save()
        digests = None
        if dist.world_size > 1:
            # BN statistics are rank 0's (DDP broadcasts them before each forward, but the last
            # forward updated each rank's own); then check that every rank holds the same weights.
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
            digests = gather_to_rank0(dist, state_digest(model))
        wall = time.perf_counter() - wall_start
        summary = {
            "run_dir": str(run_path),
            "model": cfg.model.name,
            "dataset": data.name,
            "synthetic_data": data.synthetic,
            "steps": state.step,
            "epochs": round(state.step / steps_per_epoch, 3),
            "wall_time_s": round(wall, 2),
            "final": final,
            "skipped_steps": state.skipped_steps,
            "environment": environment(),
        }
        if dist.world_size > 1:
            summary["distributed"] = {
                "world_size": dist.world_size,
                "backend": dist.backend,
                "weights_sha256_per_rank": digests,
            }

        def write_results() -> None:
            if digests and len(set(digests)) > 1:
                log.message(
                    f"warning: the {dist.world_size} processes ended with different weights; rank 0's are saved"
                )
            metrics = {k: v for k, v in final.items() if k.endswith(("error", "loss"))}
            metrics["eval_tta_flip"] = float(cfg.train.tta_flip)  # how the test metrics were measured
            meta = WeightsMeta(
                model=cfg.model.name,
                num_classes=len(data.classes),
                in_chans=data.in_chans,
                options={k: v for k, v in {"shortcut": cfg.model.shortcut}.items() if v},
                classes=data.classes,
                input_size=data.image_size,
                dataset=data.name,
                metrics=metrics,
                command=environment()["command"],
                data_sha256=data_checksum(cfg),
            )
            try:
                save_weights(run_path / "weights.safetensors", eval_model(), meta, data.stats.mean, data.stats.std)
                (run_path / "summary.json").write_text(json.dumps(summary, indent=2))
            except OSError as exc:
                raise CheckpointError(
                    f"could not write the final weights to {run_path} ({exc.strerror or exc}); the last "
                    f"checkpoint is intact: free some space, then `reslab train --resume {run_path}`"
                ) from exc

        on_rank0(dist, write_results)
        return summary
    finally:
        log.close()
