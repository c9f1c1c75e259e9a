"""What a run trains on and what it trains: the data (`build_data`) and the model (`build_model`).

Both read the resolved `Config` once; everything after them (the trainer, the step) gets plain
objects. The data's evaluation batches come from the run's `DataSource` with the run's
`Preprocess`, exactly as `reslab eval` builds them later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reslab.config import Config
from reslab.data.batches import InMemoryBatches
from reslab.data.folder_transforms import EVAL_RESIZE_RATIO
from reslab.data.norm import NormStats
from reslab.data.preprocess import Preprocess, eval_resize
from reslab.data.sources import DataSource
from reslab.errors import ConfigError
from reslab.evaluation import EVAL_BATCH_SIZE
from reslab.models import ResNet, create_model, model_info
from reslab.train.distributed import Dist
from reslab.vocab import FOLDER_AUGMENT_KINDS


@dataclass
class Data:
    train: Any  # InMemoryBatches, or FolderBatches (data.in_memory=false): the same interface
    evals: dict[str, Any]  # part ("val" under the paper split, "test") -> batches
    classes: list[str]
    preprocess: Preprocess  # how evaluation (and later predict/serve/export) prepare an image
    source: DataSource
    name: str
    synthetic: bool

    @property
    def in_chans(self) -> int:
        return self.preprocess.in_chans

    @property
    def image_size(self) -> int:
        return self.preprocess.input_size

    @property
    def stats(self) -> NormStats:
        return self.preprocess.stats

    def summary_lines(self) -> list[str]:
        """What a run prints at its start about its data: parts and sizes, channels and size, augmentation."""
        parts = ", ".join(
            f"{part} {len(batches.order(0)) if part == 'train' else ''}".strip()
            for part, batches in [("train", self.train), *self.evals.items()]
        )
        return [
            f"data: {self.name}, {len(self.classes)} classes, {self.in_chans}x{self.image_size}x{self.image_size}; "
            f"parts: {parts}"
        ]


def build_data(cfg: Config, device: torch.device, dist: Dist) -> Data:
    source = DataSource.from_config(cfg.data, cfg.train.seed)
    if cfg.train.batch_size % dist.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} must divide by the {dist.world_size} processes")
    if not cfg.data.in_memory:
        return build_folder_data(cfg, source, device, dist)
    d = cfg.data
    train = source.arrays("train")
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
    c, h, _ = train.image_shape
    preprocess = Preprocess(c, h, "shorter-center-crop", train_batches.stats)
    evals = {part: source.eval_batches(part, preprocess, batch_size=EVAL_BATCH_SIZE, **common) for part in source.parts}
    return Data(train_batches, evals, list(train.classes), preprocess, source, train.name, bool(train.synthetic))


def build_folder_data(cfg: Config, source: DataSource, device: torch.device, dist: Dist) -> Data:
    """data.in_memory=false: an ImageFolder tree decoded in DataLoader workers (ImageNet scale);
    train/ trains, val/ is the evaluation set (part "test")."""
    from reslab.data.datasets import resolve_data_dir
    from reslab.data.folder_batches import FolderBatches
    from reslab.data.folder_transforms import imagenet_norm_stats

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
    preprocess = Preprocess(3, size, eval_resize(size, EVAL_RESIZE_RATIO), imagenet_norm_stats())
    root = resolve_data_dir(d.data_dir)
    train = FolderBatches(
        root,
        "train",
        batch_size=cfg.train.batch_size // dist.world_size,
        train=True,
        stats=preprocess.stats,
        augment=d.augment,
        image_size=size,
        workers=d.workers,
        seed=cfg.train.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        device=device,
        channels_last=cfg.train.channels_last,
    )
    if len(train) == 0:
        raise ConfigError(
            f"{root}: {len(train.dataset)} training images make no whole batch of "
            f"{cfg.train.batch_size}; lower train.batch_size"
        )
    test = source.eval_batches(
        "test", preprocess, device=device, batch_size=EVAL_BATCH_SIZE, channels_last=cfg.train.channels_last
    )
    return Data(train, {"test": test}, train.classes, preprocess, source, "imagefolder", False)


def build_model(cfg: Config, data: Data) -> ResNet:
    m = cfg.model
    options: dict[str, Any] = {"zero_init_last": m.zero_init_last}
    if m.shortcut is not None:
        options["shortcut"] = m.shortcut
    if m.drop_rate:
        options["drop_rate"] = m.drop_rate
    model = create_model(m.name, num_classes=len(data.classes), in_chans=data.in_chans, **options)
    if m.pretrained:
        from reslab.train.pretrained import load_pretrained

        load_pretrained(model, m.pretrained)
    if m.activation_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def apply_depth_rules(cfg: Config) -> None:
    """The paper warms up only its deepest CIFAR nets (ResNet-110, 1202): drop the error-based
    warm-up for shallower models, as recipes state with schedule.warmup_min_depth."""
    if cfg.schedule.warmup_until_error > 0 and model_info(cfg.model.name).depth < cfg.schedule.warmup_min_depth:
        cfg.schedule.warmup_until_error = 0.0
