"""What a loader is asked for (a frozen spec) and what it offers (a Protocol), per job.

Training and evaluation are two jobs. Training batches are drawn afresh every epoch: an order
(a permutation, or class-balanced), augmentation, the last partial batch dropped; batch i of epoch
e is a pure function of (seed, e, i, rank). Evaluation batches read one part once, in a fixed
order, unaugmented, every image kept. Each job has one loader per storage, each built from one
frozen record:

    TrainBatchSpec -> InMemoryTrainBatches, FolderTrainBatches   (both `TrainBatches`)
    EvalBatchSpec  -> InMemoryEvalBatches,  FolderEvalBatches    (both `EvalBatches`)

In memory (`reslab.data.batches`): a uint8 tensor, batched crop and flip. Streamed
(`reslab.data.folder_batches`): image files decoded and cropped in DataLoader workers. A spec is
filled once, from the run's config, by whoever builds the batches (`reslab.train.build`,
`reslab.evaluation`): data/ never reads the config. A field only one loader reads says which
("in memory:", "streamed:"); the other loader ignores it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from reslab.data.decode import DEFAULT_MAX_PIXELS
from reslab.errors import ConfigError
from reslab.vocab import SAMPLERS

if TYPE_CHECKING:
    from reslab.data.augment import Augmentation
    from reslab.data.norm import NormStats

# An evaluation batch's images: (B, C, S, S); ten-crop (B, 10, C, S, S); multi-scale a list over
# images of lists over scales of (1, C, H_s, W_s).
EvalInput = torch.Tensor | list[list[torch.Tensor]]


def _check_shard(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"need batch_size >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world_size {world_size}")


@dataclass(frozen=True)
class TrainBatchSpec:
    """How a run's training batches are drawn, for either loader."""

    batch_size: int  # images per batch on this process (train.batch_size / processes)
    seed: int = 0  # train.seed: every epoch's order and every augmentation draw derive from it
    rank: int = 0  # this process; each of world_size takes a disjoint shard of one order
    world_size: int = 1
    sampler: str = "random"  # "random" (a permutation per epoch) | "balanced" (classes drawn equally often)
    repeats: int = 1  # repeated augmentation: each image this many times an epoch (1 = off)
    # in memory: "none" | "flip" | "crop" | "crop-flip" (paper sec. 4.2: pad 4, random crop, flip);
    # streamed: "scale" (paper sec. 3.4: shorter side 256..480, random crop, flip) | "rrc" | "none"
    augment: str = "crop-flip"
    hflip: bool = True  # False: never mirror (digits, text), whatever `augment` says
    augmentation: Augmentation | None = None  # policy, random erasing, MixUp / CutMix; None: none of them
    stats: NormStats | None = None  # the uint8 -> float affine; None (in memory only): computed from the images
    normalize: str = "pixel-mean"  # in memory, when stats is None: paper sec. 4.2's per-pixel mean | channel | none
    pad: int = 4  # in memory: pixels of zero padding around each image before the random crop
    image_size: int = 224  # streamed: side of the square crops
    lighting: float = 0.1  # streamed: AlexNet's PCA colour augmentation strength (alphastd); 0 = off
    in_chans: int = 3  # streamed: channels the files are decoded to
    workers: int = 2  # streamed: DataLoader worker processes; 0 decodes in the main process
    max_pixels: int = DEFAULT_MAX_PIXELS  # streamed: larger files are refused (decompression bombs)
    device: torch.device | str = "cpu"  # where the batches are yielded
    dtype: torch.dtype = torch.float32  # in memory: of the yielded images
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check_shard(self.batch_size, self.rank, self.world_size)
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if self.repeats < 1:
            raise ConfigError(f"data.repeats must be at least 1, got {self.repeats}")
        if self.pad < 0:
            raise ConfigError(f"need pad >= 0, got {self.pad}")

    def batches_per_epoch(self, images: int) -> int:
        """Whole batches each rank takes of an epoch of `images` samples (the same on every rank)."""
        return images // (self.world_size * self.batch_size)


@dataclass(frozen=True)
class EvalBatchSpec:
    """How one part is read for evaluation, for either loader.

    `image_size`, `resize` and `in_chans` are the network's input (`reslab.data.preprocess.Preprocess`):
    streamed files are decoded to it; `DataSource.eval_batches` fits in-memory arrays to it before
    `InMemoryEvalBatches` takes them as they are."""

    batch_size: int  # images per batch
    stats: NormStats | None = None  # the training set's normalisation (required: the test set's own would leak it)
    rank: int = 0  # this process; each of world_size takes every world_size-th image
    world_size: int = 1
    image_size: int = 224  # side of the square input
    resize: str = "shorter-256-center-crop"  # the `fit_image` rule of the centre crop
    in_chans: int = 3
    eval_mode: str = "center"  # streamed: "center" | "ten-crop" (paper's 10-crop) | "multi-scale" (Tables 2-4)
    scales: tuple[int, ...] | None = None  # streamed multi-scale: shorter sides (None: the paper's)
    workers: int = 2  # streamed: DataLoader worker processes; 0 decodes in the main process
    max_pixels: int = DEFAULT_MAX_PIXELS  # streamed: larger files are refused (decompression bombs)
    device: torch.device | str = "cpu"  # where the batches are yielded
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check_shard(self.batch_size, self.rank, self.world_size)

    def required_stats(self) -> NormStats:
        """`stats`; a ConfigError when missing (a loader cannot evaluate without the training set's)."""
        if self.stats is None:
            raise ConfigError(
                "a test loader needs the training set's normalisation: pass "
                "stats=train_batches.stats (statistics of the test set would leak it)"
            )
        return self.stats


class TrainBatches(Protocol):
    """Training batches of one rank, epoch by epoch (`InMemoryTrainBatches`, `FolderTrainBatches`)."""

    @property
    def classes(self) -> list[str]: ...

    @property
    def stats(self) -> NormStats: ...

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        ...

    def class_counts(self) -> torch.Tensor:
        """Images per class in the whole set (all ranks): (num_classes,) int64, on the CPU."""
        ...

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in visiting order: (len(self) * batch_size,) int64."""
        ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches `start_batch`, ... of `epoch`: images (B, C, H, W) on the device, labels (B,) int64
        (with MixUp / CutMix soft targets (B, num_classes) float32)."""
        ...


class EvalBatches(Protocol):
    """One part's evaluation batches, in a fixed order (`InMemoryEvalBatches`, `FolderEvalBatches`)."""

    @property
    def classes(self) -> list[str]: ...

    def __len__(self) -> int:
        """Batches in the part on this rank."""
        ...

    def class_counts(self) -> torch.Tensor:
        """Images per class in the whole part (all ranks): (num_classes,) int64, on the CPU."""
        ...

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[EvalInput, torch.Tensor]]:
        """Batches `start_batch`, ...: images (`EvalInput`, normalised, on the device), labels (B,) int64.
        The same for every `epoch`: evaluation draws nothing."""
        ...
