"""What a run trains on and what it trains: the data (`build_data`) and the model (`build_model`).

Both read the resolved `Config` once; everything after them (the trainer, the step) gets plain
objects. The data's evaluation batches come from the run's `DataSource` with the run's
`Preprocess`, exactly as `reslab eval` builds them later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reslab.config import Config, DataConfig
from reslab.data.augment import Augmentation
from reslab.data.batches import InMemoryTrainBatches
from reslab.data.folder_transforms import EVAL_RESIZE_RATIO
from reslab.data.norm import NormStats
from reslab.data.preprocess import Preprocess, eval_resize
from reslab.data.sources import DataSource
from reslab.data.spec import EvalBatches, TrainBatches, TrainBatchSpec
from reslab.errors import ConfigError
from reslab.evaluation import EVAL_BATCH_SIZE, data_source, eval_batch_spec
from reslab.models import ResNet, create_model, model_info
from reslab.train.distributed import Dist
from reslab.vocab import FOLDER_AUGMENT_KINDS


@dataclass
class Data:
    train: TrainBatches  # InMemoryTrainBatches, or FolderTrainBatches (data.in_memory=false)
    evals: dict[str, EvalBatches]  # part ("val", "test": `DataSource.parts`) -> batches
    classes: list[str]
    preprocess: Preprocess  # how evaluation (and later predict/serve/export) prepare an image
    source: DataSource
    name: str
    synthetic: bool
    image_hw: tuple[int, int] = (0, 0)  # (H, W) of the training images as the network sees them
    augmentation: str = ""  # the training augmentation, sampler and evaluation in words (`summary_lines`)

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
        """What a run prints at its start about its data: the dataset and where, classes and part
        sizes (and how val was made), channels and image size, and the augmentation in words."""
        src = self.source
        where = f" from {src.data_dir}" if src.data_dir and str(src.data_dir) not in self.name else ""
        how = "in memory" if src.in_memory else "streamed from disk"
        sizes = [f"train {part_size(self.train)}"]
        for part, batches in self.evals.items():
            origin = src.describe_val() if part == "val" else None
            sizes.append(f"{part} {part_size(batches)}" + (f" ({origin})" if origin else ""))
        h, w = self.image_hw if self.image_hw != (0, 0) else (self.image_size, self.image_size)
        chosen = " (the median shorter side of train, data.image_size=null)" if src.auto_image_size else ""
        if src.in_chans is not None:
            channels = f"data.in_chans={src.in_chans}"
        elif src.reads_files:
            channels = "every image grey" if self.in_chans == 1 else "colour images"
        else:
            channels = f"{src.dataset}'s own"
        evaluated = f", evaluated at {self.image_size}x{self.image_size}" if (h, w) != (self.image_size,) * 2 else ""
        return [
            f"data: {self.name}{where} ({how}); {len(self.classes)} classes; " + ", ".join(sizes),
            f"input: {self.in_chans} channel{'s' if self.in_chans > 1 else ''} ({channels}), {h}x{w} pixels{chosen}"
            + evaluated,
            f"augment: {self.augmentation}",
        ]


def part_size(batches: TrainBatches | EvalBatches) -> int:
    """Images in a part (all ranks): every loader counts its classes."""
    return int(batches.class_counts().sum())


def describe_augmentation(cfg: Config) -> str:
    """The training augmentation, the sampler and the evaluation, in words."""
    d = cfg.data
    if d.in_memory:
        words = {
            "crop-flip": f"random crop (pad {d.pad}) + horizontal flip",
            "crop": f"random crop (pad {d.pad})",
            "flip": "horizontal flip",
            "none": "none",
        }[d.augment]
    else:
        size = d.image_size or 224
        flip = " + horizontal flip" if d.hflip else ""
        words = {
            "scale": f"shorter side {round(size * EVAL_RESIZE_RATIO)}..{round(size * 480 / 224)}, random {size} crop"
            + flip,
            "rrc": f"random-resized {size} crop" + flip,
            "none": f"none (centre {size} crop)",
        }.get(d.augment, d.augment)
    parts = [words, *augmentation_of(d).describe()]
    if d.repeats > 1:
        parts.append(f"repeated augmentation: each image {d.repeats} times an epoch")
    if not d.hflip:
        parts.append("no flips (data.hflip=false)")
    if d.sampler == "balanced":
        parts.append("class-balanced sampling")
    if cfg.train.tta_flip:
        parts.append("flip TTA at evaluation")
    return "; ".join(parts)


def augmentation_of(d: DataConfig) -> Augmentation:
    """The modern augmentation settings of data.* (policy, erasing, MixUp / CutMix)."""
    return Augmentation(d.policy, d.policy_magnitude, d.random_erasing, d.mixup_alpha, d.cutmix_alpha)


def train_batch_spec(
    cfg: Config, dist: Dist, device: torch.device, *, stats: NormStats | None = None, in_chans: int = 3
) -> TrainBatchSpec:
    """How this process draws its training batches, from the run's config: the one place data.*
    becomes a `TrainBatchSpec` (`stats` None: computed from the images in memory by data.normalize;
    `in_chans`: what streamed files are decoded to)."""
    d = cfg.data
    return TrainBatchSpec(
        batch_size=cfg.train.batch_size // dist.world_size,
        seed=cfg.train.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        sampler=d.sampler,
        repeats=d.repeats,
        augment=d.augment,
        hflip=d.hflip,
        augmentation=augmentation_of(d),
        stats=stats,
        normalize=d.normalize,
        pad=d.pad,
        image_size=d.image_size or 224,  # streamed: the training crop
        in_chans=in_chans,
        workers=d.workers,
        device=device,
        channels_last=cfg.train.channels_last,
    )


def build_data(cfg: Config, device: torch.device, dist: Dist) -> Data:
    source = data_source(cfg).resolved()
    check_folds(source)
    if cfg.train.batch_size % dist.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} must divide by the {dist.world_size} processes")
    check_accumulation(cfg.train.batch_size, dist.world_size, cfg.train.accum_steps)
    if source.watch_part is None:
        raise ConfigError(
            f"nothing to evaluate on: {source.dataset} {source.data_dir or ''} has no val or test part of its "
            "own and data.split=full holds out nothing; use data.split=auto (a stratified data.val_fraction "
            "of train) or add a val/ folder"
        )
    if not cfg.data.in_memory:
        return build_folder_data(cfg, source, device, dist)
    train = source.arrays("train")
    train_batches = InMemoryTrainBatches(train, train_batch_spec(cfg, dist, device))
    c, h, w = train.image_shape
    # Evaluation at data.eval_image_size: the val/test images resized to it (bilinear, antialiased:
    # `fit_image`, from the files themselves for image files), training stays at the stored size.
    eval_size, resize = eval_geometry(cfg, h, None)
    if (eval_size, resize) != (h, "shorter-center-crop") and train_batches.stats.mean.shape[1:] != (1, 1):
        raise ConfigError(
            f"data.eval_image_size / data.eval_resize_size: a per-pixel mean (data.normalize={cfg.data.normalize}) "
            f"holds {h}x{w} images; use data.normalize=channel to evaluate at another size"
        )
    preprocess = Preprocess(c, eval_size, resize, train_batches.stats)
    return Data(
        train_batches,
        eval_parts(cfg, source, preprocess, device),
        list(train.classes),
        preprocess,
        source,
        train.name,
        bool(train.synthetic),
        image_hw=(h, w),
        augmentation=describe_augmentation(cfg),
    )


def eval_parts(cfg: Config, source: DataSource, preprocess: Preprocess, device: torch.device) -> dict[str, EvalBatches]:
    """The batches of every part evaluated while training, prepared as the weights will record
    (`preprocess`), exactly as `reslab eval` prepares them later."""
    spec = eval_batch_spec(
        preprocess, device, workers=source.workers, batch_size=EVAL_BATCH_SIZE, channels_last=cfg.train.channels_last
    )
    return {part: source.eval_batches(part, spec) for part in source.parts}


def eval_subsets(evals: dict[str, EvalBatches], images: int) -> dict[str, EvalBatches]:
    """The batches evaluations during training use: every part whole (`images` 0), or a fixed random
    subset of `images` images of each (train.eval_images; in-memory parts only)."""
    if not images:
        return evals
    streamed = [part for part, batches in evals.items() if not hasattr(batches, "subset")]
    if streamed:
        raise ConfigError(
            f"train.eval_images={images} takes a subset of in-memory parts, and {', '.join(streamed)} is streamed "
            "from disk (data.in_memory=false or 10-crop evaluation): set train.eval_images=0"
        )
    subsets = {part: batches.subset(images) for part, batches in evals.items()}
    return evals if all(subsets[p] is evals[p] for p in evals) else subsets  # no part larger: every image


def check_folds(source: DataSource) -> None:
    """data.folds carves val from the training images: a dataset's own val part would go unused."""
    if source.folds and "val" in source.stored:
        raise ConfigError(
            f"data.folds: the val part is each fold of the training images in turn, and {source.data_dir} has a "
            "val part of its own, which would go unused: move its images into train/ (or drop --folds)"
        )


def check_accumulation(batch_size: int, world_size: int, accum_steps: int) -> None:
    """train.accum_steps must cut each process's share of a batch into equal micro-batches."""
    per_process = batch_size // world_size
    if per_process % accum_steps:
        shared = f" ({batch_size} over {world_size} processes)" if world_size > 1 else ""
        raise ConfigError(
            f"train.accum_steps={accum_steps} does not divide the {per_process} images each process takes of a "
            f"batch{shared}: use a train.batch_size divisible by {world_size * accum_steps}, or another accum_steps"
        )


def build_folder_data(cfg: Config, source: DataSource, device: torch.device, dist: Dist) -> Data:
    """data.in_memory=false: image files decoded in DataLoader workers (ImageNet scale); the parts
    as in memory (an ImageFolder tree's val/ folder is part "val")."""
    from reslab.data.folder_transforms import imagenet_norm_stats

    d = cfg.data
    problems = []
    if not source.reads_files:
        problems.append(
            f"data.dataset={d.dataset!r} (only imagefolder and csv stream from disk; the others fit in memory)"
        )
    if d.augment not in FOLDER_AUGMENT_KINDS:
        problems.append(f"data.augment={d.augment!r} (valid here: {', '.join(FOLDER_AUGMENT_KINDS)})")
    if d.normalize != "channel":
        problems.append(
            f"data.normalize={d.normalize!r} (streaming normalises per channel with ImageNet's mean/std: use channel)"
        )
    if problems:
        raise ConfigError("data.in_memory=false does not fit " + "; ".join(problems))
    size = d.image_size or 224  # the training crop
    in_chans = source.input_channels or 3
    eval_size, resize = eval_geometry(cfg, size, EVAL_RESIZE_RATIO)
    preprocess = Preprocess(in_chans, eval_size, resize, imagenet_norm_stats(in_chans))
    train = source.folder_train_batches(train_batch_spec(cfg, dist, device, stats=preprocess.stats, in_chans=in_chans))
    if len(train) == 0:
        raise ConfigError(
            f"{source.data_dir}: {len(train.dataset)} training images make no whole batch of "
            f"{cfg.train.batch_size}; lower train.batch_size"
        )
    evals = eval_parts(cfg, source, preprocess, device)
    return Data(
        train,
        evals,
        train.classes,
        preprocess,
        source,
        d.dataset,
        False,
        image_hw=(size, size),
        augmentation=describe_augmentation(cfg),
    )


def eval_geometry(cfg: Config, train_size: int, resize_ratio: float | None) -> tuple[int, str]:
    """(input size, `fit_image` rule) of evaluation, and so of the weights' preprocessing: the size
    data.eval_image_size (None: the training size); the shorter side to data.eval_resize_size first
    when set, else `eval_resize(size, resize_ratio)` (streamed: 256/224 of it; in memory: None,
    straight to the size)."""
    d = cfg.data
    size = d.eval_image_size or train_size
    if d.eval_resize_size is None:
        return size, eval_resize(size, resize_ratio)
    if d.eval_resize_size < size:
        raise ConfigError(
            f"data.eval_resize_size={d.eval_resize_size} is below the evaluation crop of {size} pixels "
            "(data.eval_image_size, else data.image_size): use a shorter side at least the crop, or null"
        )
    return size, f"shorter-{d.eval_resize_size}-center-crop"


def build_model(cfg: Config, data: Data) -> ResNet:
    m = cfg.model
    options: dict[str, Any] = {"zero_init_last": m.zero_init_last}
    if m.shortcut is not None:
        options["shortcut"] = m.shortcut
    if m.drop_rate:
        options["drop_rate"] = m.drop_rate
    if m.drop_path_rate:
        options["drop_path_rate"] = m.drop_path_rate
    model = create_model(m.name, num_classes=len(data.classes), in_chans=data.in_chans, **options)
    check_input_size(model, data)
    if m.pretrained:
        from reslab.train.pretrained import load_pretrained

        load_pretrained(model, m.pretrained)
    if m.activation_checkpointing:
        model.set_grad_checkpointing(True)
    return model


# CIFAR-stem networks (stride 1 stem) suggested when images are too small for the one asked for.
SMALL_INPUT_MODELS = ("fast_resnet10", "resnet20")


def check_input_size(model: ResNet, data: Data) -> None:
    """A one-line ConfigError when the images are smaller than the network's `min_input_size`."""
    need = model.min_input_size
    h, w = data.image_hw if data.image_hw != (0, 0) else (data.image_size, data.image_size)
    if min(h, w) >= need:
        return
    fits = next(
        (name for name in SMALL_INPUT_MODELS if create_model(name, num_classes=2).min_input_size <= min(h, w)), None
    )
    alternative = f" or a CIFAR-stem model such as {fits}" if fits and fits != model.name else ""
    raise ConfigError(
        f"{model.name} needs at least {need}x{need} input; these images are {h}x{w}: use "
        f"--set data.image_size={need}{alternative}"
    )


def apply_depth_rules(cfg: Config) -> None:
    """The paper warms up only its deepest CIFAR nets (ResNet-110, 1202): drop the error-based
    warm-up for shallower models, as recipes state with schedule.warmup_min_depth."""
    if cfg.schedule.warmup_until_error > 0 and model_info(cfg.model.name).depth < cfg.schedule.warmup_min_depth:
        cfg.schedule.warmup_until_error = 0.0
