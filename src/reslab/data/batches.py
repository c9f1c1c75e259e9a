"""`InMemoryTrainBatches`, `InMemoryEvalBatches`: normalised batches straight from a uint8 tensor, no workers.

For datasets that fit in memory (CIFAR's 50k images are 150 MB as uint8) a DataLoader spends
its time in per-image Python; here the whole dataset sits on the target device once, and each
batch is an `index_select` plus a few whole-batch tensor ops (airbench's approach). Training
batches (`InMemoryTrainBatches`, from a `TrainBatchSpec`) are ordered and augmented as below;
evaluation batches (`InMemoryEvalBatches`, from an `EvalBatchSpec`) are the stored order,
normalised with the training set's statistics, every image kept.

Augmentation, the paper's for CIFAR (He et al. 2015, sec. 4.2, after Lee et al.): pad 4 pixels
on each side, take a random 32x32 crop, flip horizontally with probability 1/2. We pad with
zeros *after* normalising, as fb.resnet.torch (which reproduced the paper's numbers) does, so
the border is the mean image rather than black. The normalised batch is written into the middle
of a zeroed (B, C, H+2p, W+2p) buffer and one `gather` reads every output pixel from its source
position; a flip only reverses the column indices, so crop and flip cost a single pass. On a
2-core CPU this beat grouping images by offset (airbench's loop), `unfold` + advanced indexing,
and gathering from a padded uint8 copy of the dataset.

Everything random is a pure function of (seed, epoch, batch index, rank):
  - epoch e visits the samples in `randperm(N)` drawn from a generator seeded with
    seed * 1000003 + e, independent of earlier epochs;
  - batch i of epoch e draws its crops and flips from its own generator, on the CPU.
So a run resumed at (epoch, start_batch) sees bit-for-bit the batches it would have seen, the
same on CPU and GPU, and with world_size > 1 each rank takes a disjoint shard
perm[rank::world_size] of one shared order.

The class-balanced order (sampler="balanced", `balanced_order`) has the random order's length N
and is drawn from the same per-epoch generator: each of the C classes that have images gets N // C
draws (the first N % C classes of a seeded shuffle of the classes one more); a class's draws are
its images in a seeded permutation, a fresh permutation each time they run out (so a rare class
repeats, a common one shows a subset each epoch); and the classes are interleaved by a seeded
shuffle of the N slots. It is a pure function of (labels, seed, epoch), sharded like the
random order, so resume and torchrun behave the same.

Repeated augmentation (repeats=r > 1, Hoffer et al. 2020; timm's and torchvision's RASampler):
`repeated_order` keeps the first ceil(N / r) images of the epoch's order (random or balanced) and
shows each r times in a row, N samples in all, so the epoch keeps its length. Sharded as above
(rank k takes every world_size-th sample), the r copies of an image land on r different ranks when
r <= world_size (with one process they share a batch), each augmented differently.

Modern augmentation (`reslab.data.augment`, `TrainBatchSpec.augmentation`): a policy per image on the uint8 batch
before normalise + crop + flip, then random erasing and MixUp / CutMix on the normalised batch,
whose labels become soft targets (B, num_classes) float32. All drawn from seeds derived from the
batch's seed (`augment.stream_seed`), so resume stays bit-exact. With none of them on, a batch
takes exactly the path it took before they existed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from reslab.data.array_dataset import ArrayDataset
from reslab.data.norm import NormStats, compute_norm_stats
from reslab.data.spec import EvalBatchSpec, TrainBatchSpec
from reslab.errors import ConfigError
from reslab.vocab import AUGMENT_KINDS, NORMALIZE_KINDS

if TYPE_CHECKING:
    from reslab.data.augment import BatchAugment, BatchPolicy

_SEED_STRIDE = 1_000_003  # a prime; mixes (seed, epoch, ...) into one generator seed
_SEED_MODULUS = 2**63  # manual_seed takes a 64-bit value


def draw_augmentation(
    batch_size: int, generator: torch.Generator, *, crop: bool, flip: bool, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image crop offsets (B, 2) int64 as (top, left) in [0, 2*pad], and flips (B,) bool.

    Drawn on the CPU from `generator`, so a batch's augmentation depends only on the seed of
    that generator, never on the device or on what ran before.
    """
    if crop and pad > 0:
        offsets = torch.randint(0, 2 * pad + 1, (batch_size, 2), generator=generator)
    else:
        offsets = torch.full((batch_size, 2), pad, dtype=torch.int64)  # centre = no shift
    if flip:
        flips = torch.rand(batch_size, generator=generator) < 0.5
    else:
        flips = torch.zeros(batch_size, dtype=torch.bool)
    return offsets, flips


def crop_flip_index(
    offsets: torch.Tensor, flips: torch.Tensor, height: int, width: int, padded_width: int
) -> torch.Tensor:
    """Flat source index into a padded (Hp * Wp) image for each output pixel: (B, H * W) int64."""
    rows = offsets[:, :1] + torch.arange(height, device=offsets.device)  # (B, H)
    columns = torch.arange(width, device=offsets.device)
    columns = torch.where(flips[:, None], width - 1 - columns, columns)  # (B, W), reversed if flip
    columns = columns + offsets[:, 1:]
    return (rows[:, :, None] * padded_width + columns[:, None, :]).flatten(1)


def normalize_crop_flip(
    images: torch.Tensor,
    stats: NormStats,
    offsets: torch.Tensor,
    flips: torch.Tensor,
    pad: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B, C, H, W) `dtype`: normalise, zero-pad by `pad`, crop, flip.

    Image b is cropped at rows offsets[b, 0] .. +H and columns offsets[b, 1] .. +W of the
    padded image, then mirrored left-right if flips[b]. `stats` must be on the images' device.
    """
    batch, channels, height, width = images.shape
    padded_h, padded_w = height + 2 * pad, width + 2 * pad
    scale, shift = stats.affine()
    padded = images.new_zeros((batch, channels, padded_h, padded_w), dtype=torch.float32)
    inner = padded[:, :, pad : pad + height, pad : pad + width]
    inner.copy_(images).mul_(scale).add_(shift)  # normalise straight into the buffer
    index = crop_flip_index(offsets.to(images.device), flips.to(images.device), height, width, padded_w)
    index = index[:, None, :].expand(batch, channels, height * width)  # same pixels per channel
    out = padded.view(batch, channels, padded_h * padded_w).gather(2, index)
    out = out.view(batch, channels, height, width)
    return out if dtype == torch.float32 else out.to(dtype)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * _SEED_STRIDE + epoch) % _SEED_MODULUS


def balanced_order(labels: torch.Tensor, num_classes: int, seed: int, epoch: int) -> torch.Tensor:
    """A class-balanced visiting order of len(labels) indices for `epoch` (see the module docstring).

    labels: (N,) int64 on any device; returns (N,) int64 on the CPU, a pure function of
    (labels, seed, epoch).
    """
    labels = labels.cpu()
    n = len(labels)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts.nonzero().flatten()  # classes with images, in label order
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    share, extra = divmod(n, len(present))
    draws_per_class = torch.full((len(present),), share, dtype=torch.int64)
    draws_per_class[torch.randperm(len(present), generator=generator)[:extra]] += 1
    by_class = labels.argsort(stable=True)  # the images of each class, contiguous, in index order
    starts = torch.cumsum(counts, 0) - counts
    draws = []
    for cls, wanted in zip(present.tolist(), draws_per_class.tolist()):
        members = by_class[starts[cls] : starts[cls] + counts[cls]]
        cycles = -(-wanted // len(members))
        picks = torch.cat([torch.randperm(len(members), generator=generator) for _ in range(cycles)])[:wanted]
        draws.append(members[picks])
    slots = torch.repeat_interleave(present, draws_per_class)  # (N,) the class of each slot, grouped
    slots = slots[torch.randperm(n, generator=generator)]  # interleaved
    order = torch.empty(n, dtype=torch.int64)
    # The slots of each class, in position order, receive that class's draws in their order.
    order[slots.argsort(stable=True)] = torch.cat(draws)
    return order


def repeated_order(order: torch.Tensor, repeats: int) -> torch.Tensor:
    """Repeated augmentation: the first ceil(N / repeats) indices of `order`, each `repeats` times in
    a row, cut to N: (N,) -> (N,). Sharded rank::world_size, consecutive copies go to different ranks."""
    if repeats == 1:
        return order
    n = len(order)
    return order[: -(-n // repeats)].repeat_interleave(repeats)[:n]


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """Seed of the augmentation of one batch; ranks differ so shards are not augmented alike."""
    return ((epoch_seed(seed, epoch) * _SEED_STRIDE + rank) * _SEED_STRIDE + batch) % _SEED_MODULUS


def train_shard(labels: torch.Tensor, num_classes: int, spec: TrainBatchSpec, epoch: int) -> torch.Tensor:
    """This rank's training indices for `epoch`: (batches_per_epoch * batch_size,) int64, on the CPU.

    The epoch's order of all N samples (a permutation drawn from (seed, epoch), or `balanced_order`),
    repeated as `repeated_order` says, trimmed so that every rank gets the same whole batches, and
    sharded rank::world_size. Both loaders take it (the streamed one for the balanced sampler and
    repeated augmentation; its plain permutation is a `DistributedSampler`'s).
    """
    if spec.sampler == "balanced":
        order = balanced_order(labels, num_classes, spec.seed, epoch)
    else:
        generator = torch.Generator().manual_seed(epoch_seed(spec.seed, epoch))
        order = torch.randperm(len(labels), generator=generator)
    order = repeated_order(order, spec.repeats)
    whole = spec.batches_per_epoch(len(labels)) * spec.batch_size * spec.world_size
    return order[:whole][spec.rank :: spec.world_size]


class _InMemoryBatches:
    """What both in-memory loaders share: the images moved to the device once, the labels, and the
    batches of an order. Subclasses set `stats` and say whether the last partial batch is dropped."""

    drop_last = False  # True: every rank the same whole batches (training)
    stats: NormStats

    def __init__(
        self, ds: ArrayDataset, batch_size: int, rank: int, world_size: int, device: torch.device | str
    ) -> None:
        self.device = torch.device(device)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.name = ds.name
        self.classes = list(ds.classes)
        # Moved once; on the CPU a memory-mapped cache stays memory-mapped.
        self.images = ds.images.to(self.device)  # (N, C, H, W) uint8
        self.labels = ds.labels.to(self.device)  # (N,) int64

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        n = len(self.labels)
        if self.drop_last:
            return n // (self.world_size * self.batch_size)
        shard = len(range(self.rank, n, self.world_size))
        return -(-shard // self.batch_size)

    def class_counts(self) -> torch.Tensor:
        """Images per class in the whole set (all ranks): (num_classes,) int64, on the CPU."""
        return torch.bincount(self.labels.cpu(), minlength=len(self.classes))

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return min(len(self) * self.batch_size, len(range(self.rank, len(self.labels), self.world_size)))

    def _check_batches(self) -> None:
        if len(self) == 0:
            raise ConfigError(
                f"{self.name}: {len(self.labels)} images make no whole batch of {self.batch_size} on each of "
                f"{self.world_size} process(es); lower the batch size"
            )

    def _take(self, order: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `batch` of `order` (on the device): images (B, C, H, W) uint8 and labels (B,) int64."""
        index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
        return self.images.index_select(0, index), self.labels.index_select(0, index)  # faster than [index]


class InMemoryTrainBatches(_InMemoryBatches):
    """Training batches of (images (B, C, H, W) `spec.dtype`, labels (B,) int64) on `spec.device`.

    Shuffled each epoch (sampler "random": a permutation; "balanced": classes drawn equally often,
    `balanced_order`), augmented, the last partial batch dropped (see the module docstring).
    `spec.stats` None computes the normalisation from `ds` by `spec.normalize`: hand the result
    (`.stats`) to the evaluation batches.
    """

    drop_last = True

    def __init__(self, ds: ArrayDataset, spec: TrainBatchSpec) -> None:
        if spec.augment not in AUGMENT_KINDS:
            raise ConfigError(f"unknown augment {spec.augment!r}; valid: {', '.join(AUGMENT_KINDS)}")
        if spec.normalize not in NORMALIZE_KINDS:
            raise ConfigError(f"unknown normalize {spec.normalize!r}; valid: {', '.join(NORMALIZE_KINDS)}")
        super().__init__(ds, spec.batch_size, spec.rank, spec.world_size, spec.device)
        self.spec = spec
        stats = spec.stats if spec.stats is not None else compute_norm_stats(self.images, spec.normalize)
        _check_stats(stats, ds.image_shape)
        self.stats = stats.to(self.device)
        self.crop = spec.augment in ("crop", "crop-flip")
        self.flip = spec.augment in ("flip", "crop-flip") and spec.hflip
        # Modern augmentation; None when off, so the batch loop takes the plain path exactly.
        self.policy: BatchPolicy | None = None
        self.per_batch: BatchAugment | None = None
        augmentation = spec.augmentation
        if augmentation is not None and augmentation.active:
            from reslab.data.augment import BatchAugment, BatchPolicy

            augmentation.check(len(self.classes))
            if augmentation.policy != "none":
                self.policy = BatchPolicy(augmentation.policy, augmentation.policy_magnitude)
            self.per_batch = BatchAugment(augmentation, len(self.classes)) if augmentation.per_batch else None
        self._check_batches()

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch` in visiting order: (num_samples,) int64, CPU."""
        return train_shard(self.labels, len(self.classes), self.spec, epoch)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches `start_batch`, `start_batch + 1`, ... of `epoch` (0-based); with MixUp / CutMix
        the labels are soft targets (B, num_classes) float32."""
        spec = self.spec
        order = self.order(epoch).to(self.device)
        for batch in range(start_batch, len(self)):
            images, labels = self._take(order, batch)
            seed = batch_seed(spec.seed, epoch, spec.rank, batch)
            if self.policy is not None:  # per image, uint8 in, uint8 out
                images = self.policy(images, seed)
            if self.crop or self.flip:
                pad = spec.pad if self.crop else 0
                generator = torch.Generator().manual_seed(seed)
                offsets, flips = draw_augmentation(len(images), generator, crop=self.crop, flip=self.flip, pad=pad)
                x = normalize_crop_flip(images, self.stats, offsets, flips, pad, spec.dtype)
            else:
                x = self.stats.apply(images, spec.dtype)
            if self.per_batch is not None:  # erasing, MixUp / CutMix (soft labels)
                x, labels = self.per_batch(x, labels, seed)
            if spec.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"InMemoryTrainBatches({self.name}, n={len(self.labels)}, batch_size={self.batch_size}, "
            f"augment={s.augment!r}, sampler={s.sampler!r}, repeats={s.repeats}, policy={self.policy!r}, "
            f"per_batch={self.per_batch!r}, batches={len(self)}, rank={self.rank}/{self.world_size}, "
            f"device={self.device})"
        )


class InMemoryEvalBatches(_InMemoryBatches):
    """Evaluation batches of (images (B, C, H, W) float32, labels (B,) int64) on `spec.device`: the
    images in stored order, normalised with the training set's `spec.stats`, every one kept (rank r
    takes images r, r + world_size, ...)."""

    # Evaluation draws nothing: no policy, no per-batch augmentation, each image once.
    policy: None = None
    per_batch: None = None
    repeats = 1

    def __init__(self, ds: ArrayDataset, spec: EvalBatchSpec) -> None:
        stats = spec.required_stats()
        super().__init__(ds, spec.batch_size, spec.rank, spec.world_size, spec.device)
        _check_stats(stats, ds.image_shape)
        self.stats = stats.to(self.device)
        self.channels_last = spec.channels_last
        self._check_batches()

    def order(self, epoch: int = 0) -> torch.Tensor:
        """This rank's sample indices, the same for every epoch: (num_samples,) int64, CPU."""
        return torch.arange(len(self.labels))[self.rank :: self.world_size]

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches `start_batch`, `start_batch + 1`, ... of the part (the same for every epoch)."""
        order = self.order().to(self.device)
        for batch in range(start_batch, len(self)):
            images, labels = self._take(order, batch)
            x = self.stats.apply(images)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels

    def subset(self, images: int, seed: int = 0) -> InMemoryEvalBatches:
        """The same batches of a fixed random subset of `images` images (drawn with `seed`, kept in
        stored order; on every rank the same); itself when the part has no more than that."""
        n = len(self.labels)
        if images >= n:
            return self
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:images].sort().values
        part = copy.copy(self)
        part.images, part.labels = self.images[keep.to(self.device)], self.labels[keep.to(self.device)]
        return part

    def __repr__(self) -> str:
        return (
            f"InMemoryEvalBatches({self.name}, n={len(self.labels)}, batch_size={self.batch_size}, "
            f"batches={len(self)}, rank={self.rank}/{self.world_size}, device={self.device})"
        )


def _check_stats(stats: NormStats, image_shape: tuple[int, int, int]) -> None:
    try:
        torch.broadcast_shapes(stats.mean.shape, stats.std.shape, image_shape)
    except RuntimeError:
        raise ConfigError(
            f"normalisation stats of shape {tuple(stats.mean.shape)} do not fit images of shape "
            f"{image_shape}; were they computed on a different dataset or image size?"
        ) from None
    if torch.broadcast_shapes(stats.mean.shape, image_shape) != torch.Size(image_shape):
        raise ConfigError(f"normalisation stats {tuple(stats.mean.shape)} larger than images {image_shape}")
