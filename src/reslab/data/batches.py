"""`InMemoryBatches`: normalised, augmented batches straight from a uint8 tensor, no workers.

For datasets that fit in memory (CIFAR's 50k images are 150 MB as uint8) a DataLoader spends
its time in per-image Python; here the whole dataset sits on the target device once, and each
batch is an `index_select` plus a few whole-batch tensor ops (airbench's approach).

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

Modern augmentation (`reslab.data.augment`, `augmentation=`): a policy per image on the uint8 batch
before normalise + crop + flip, then random erasing and MixUp / CutMix on the normalised batch,
whose labels become soft targets (B, num_classes) float32. All drawn from seeds derived from the
batch's seed (`augment.stream_seed`), so resume stays bit-exact. With none of them on, a batch
takes exactly the path it took before they existed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import torch

from reslab.data.array_dataset import ArrayDataset
from reslab.data.norm import Normalize, NormStats, compute_norm_stats
from reslab.errors import ConfigError
from reslab.vocab import AUGMENT_KINDS, NORMALIZE_KINDS, SAMPLERS

if TYPE_CHECKING:
    from reslab.data.augment import Augmentation

Augment = Literal["none", "flip", "crop", "crop-flip"]

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


class InMemoryBatches:
    """Batches of (images (B, C, H, W) `dtype`, labels (B,) int64) on `device`, epoch by epoch.

    train=True: shuffled each epoch (sampler "random": a permutation; "balanced": classes drawn
        equally often, `balanced_order`), augmented, and the last partial batch dropped.
    train=False: fixed order, no augmentation, every sample kept (drop_last=None picks this).
    stats: normalisation statistics; None computes them from `ds`, which must then be the
        training set: pass the train loader's `stats` to the test loader.
    """

    def __init__(
        self,
        ds: ArrayDataset,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        augment: Augment = "crop-flip",  # ignored when train=False
        pad: int = 4,  # pixels of zero padding around each image before the random crop
        normalize: Normalize = "pixel-mean",  # paper: subtract the train set's per-pixel mean
        stats: NormStats | None = None,
        drop_last: bool | None = None,  # None: True for train, False for test
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        sampler: str = "random",  # train=True: "random" | "balanced" (ignored when train=False)
        repeats: int = 1,  # train=True: repeated augmentation, each image this many times an epoch (1 = off)
        augmentation: Augmentation | None = None,  # train=True: policy, erasing, mixing (`reslab.data.augment`)
    ) -> None:
        if augment not in AUGMENT_KINDS:
            raise ConfigError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENT_KINDS)}")
        if normalize not in NORMALIZE_KINDS:
            raise ConfigError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZE_KINDS)}")
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if batch_size < 1 or pad < 0:
            raise ConfigError(f"need batch_size >= 1 and pad >= 0, got {batch_size} and {pad}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world_size {world_size}")
        if repeats < 1:
            raise ConfigError(f"data.repeats must be at least 1, got {repeats}")
        if stats is None and not train and normalize != "none":
            raise ConfigError(
                "a test loader needs the training set's normalisation: pass "
                "stats=train_batches.stats (statistics of the test set would leak it)"
            )
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.augment: Augment = augment if train else "none"
        self.sampler = sampler if train else "random"
        self.repeats = repeats if train else 1
        self.pad = pad
        self.drop_last = train if drop_last is None else drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.dtype = dtype
        self.channels_last = channels_last
        self.name = ds.name
        self.classes = list(ds.classes)
        # Moved once; on the CPU a memory-mapped cache stays memory-mapped.
        self.images = ds.images.to(self.device)  # (N, C, H, W) uint8
        self.labels = ds.labels.to(self.device)  # (N,) int64
        if stats is None:
            stats = compute_norm_stats(self.images, normalize)
        _check_stats(stats, ds.image_shape)
        self.stats = stats.to(self.device)
        # Modern augmentation, training only; None when off, so the batch loop is today's exactly.
        self.policy, self.per_batch = None, None
        if train and augmentation is not None and augmentation.active:
            from reslab.data.augment import BatchAugment, BatchPolicy

            augmentation.check(len(self.classes))
            if augmentation.policy != "none":
                self.policy = BatchPolicy(augmentation.policy, augmentation.policy_magnitude)
            self.per_batch = BatchAugment(augmentation, len(self.classes)) if augmentation.per_batch else None
        if len(self) == 0:
            raise ConfigError(
                f"{ds.name}: {len(ds)} images make no whole batch of {batch_size} on each of "
                f"{world_size} process(es); lower the batch size"
            )

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

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch` in visiting order: (num_samples,) int64, CPU."""
        n = len(self.labels)
        if self.train and self.sampler == "balanced":
            perm = balanced_order(self.labels, len(self.classes), self.seed, epoch)
        elif self.train:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=generator)
        else:
            perm = torch.arange(n)
        perm = repeated_order(perm, self.repeats)
        if self.drop_last:  # trim so every rank gets the same whole number of batches
            perm = perm[: len(self) * self.world_size * self.batch_size]
        return perm[self.rank :: self.world_size]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches `start_batch`, `start_batch + 1`, ... of `epoch` (0-based); with MixUp / CutMix
        the labels are soft targets (B, num_classes) float32."""
        order = self.order(epoch).to(self.device)
        crop = self.augment in ("crop", "crop-flip")
        flip = self.augment in ("flip", "crop-flip")
        for batch in range(start_batch, len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = self.images.index_select(0, index)  # (B, C, H, W) uint8; faster than [index]
            labels = self.labels.index_select(0, index)
            if self.policy is not None:  # per image, uint8 in, uint8 out
                images = self.policy(images, batch_seed(self.seed, epoch, self.rank, batch))
            if crop or flip:
                generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, self.rank, batch))
                pad = self.pad if crop else 0
                offsets, flips = draw_augmentation(len(index), generator, crop=crop, flip=flip, pad=pad)
                x = normalize_crop_flip(images, self.stats, offsets, flips, pad, self.dtype)
            else:
                x = self.stats.apply(images, self.dtype)
            if self.per_batch is not None:  # erasing, MixUp / CutMix (soft labels)
                x, labels = self.per_batch(x, labels, batch_seed(self.seed, epoch, self.rank, batch))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels

    def __repr__(self) -> str:
        return (
            f"InMemoryBatches({self.name}, n={len(self.labels)}, batch_size={self.batch_size}, "
            f"train={self.train}, augment={self.augment!r}, sampler={self.sampler!r}, repeats={self.repeats}, "
            f"policy={self.policy!r}, per_batch={self.per_batch!r}, batches={len(self)}, "
            f"rank={self.rank}/{self.world_size}, device={self.device})"
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
