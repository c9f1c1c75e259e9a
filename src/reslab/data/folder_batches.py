"""`FolderTrainBatches`, `FolderEvalBatches`: image files decoded in DataLoader workers.

For trees that do not fit in memory as uint8 (ImageNet); `reslab train` with
`data.in_memory=false` (the `imagenet-paper` recipe) trains through this, `reslab eval` evaluates
through it. The images are one split of an ImageFolder tree or a CSV listing
(`reslab.data.folder.list_samples`: classes from train/ or the CSV's training rows), optionally
restricted to a subset of it (a val part carved from train/).

The same protocols as the in-memory loaders (`reslab.data.spec`: `TrainBatches`, `EvalBatches`),
built from the same specs, so the trainer, checkpoints and resume need no second code path.
Workers decode (the one robust decoder) and crop (`reslab.data.folder_transforms`), yielding
uint8; the main process normalises each batch with `NormStats.apply`, the affine every consumer
uses, on the target device.

Order and augmentation: epoch e visits the training images in a permutation drawn from
(seed, e) (a `DistributedSampler`, so every rank gets its own shard and the last partial batch
is dropped), or with sampler="balanced" in `reslab.data.batches.balanced_order` (rank r takes
order[r::world_size] of it, trimmed to whole batches). Each epoch builds a DataLoader over that
epoch's indices from `start_batch` on, so a run resumed mid-epoch continues with the images it
had not seen yet, without decoding the skipped ones. The workers' random crops are seeded from
(seed, epoch); after a mid-epoch resume the draws differ from an uninterrupted run's (workers
pick up other batches), so such a resume continues the same schedule and data order but is not
bit-exact. The PCA lighting of a batch is drawn in the main process from (seed, epoch, rank, batch).

Modern augmentation (`reslab.data.augment`): a policy per image in the workers after the crop and
flip; random erasing and MixUp / CutMix (soft targets (B, num_classes) float32) per batch in the
main process after normalisation and lighting, from (seed, epoch, rank, batch) like the lighting.
Repeated augmentation (repeats > 1) takes the order of `reslab.data.batches.repeated_order` (of a
permutation drawn from (seed, epoch), or of the balanced order), sharded as the balanced order.

A file that cannot be decoded stops the epoch with one line naming it, from any worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from reslab.data.augment import Augmentation, BatchAugment
from reslab.data.batches import batch_seed, epoch_seed, train_shard
from reslab.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from reslab.data.folder import ImageFiles, Split, list_samples
from reslab.data.folder_transforms import Lighting, eval_transform, train_transform
from reslab.data.norm import NormStats
from reslab.data.preprocess import channel_mode
from reslab.data.spec import EvalBatchSpec, EvalInput, TrainBatchSpec
from reslab.errors import ConfigError, DataError


class FolderSplit(Dataset):
    """(image, label) of one split, listed by `list_samples` (the images at `subset` of it, when
    given); the image goes through `transform` after the robust decoder. A file that fails to
    decode yields its error message instead of an image, so the main process can stop with that
    one line (see `collate`)."""

    def __init__(
        self,
        root: str | Path,
        split: Split,
        transform: Callable[[Any], Any] | None,
        *,
        dataset: str = "imagefolder",  # or "csv": `root` is then the CSV file
        subset: torch.Tensor | None = None,  # indices into the split's listing
        in_chans: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.samples, self.classes = list_samples(dataset, self.root, split)
        if subset is not None:
            self.samples = [self.samples[i] for i in subset.tolist()]
        self.transform = transform
        self.mode = channel_mode(in_chans)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            image = decode_image(path, mode=self.mode, max_pixels=self.max_pixels)
            return (self.transform(image) if self.transform is not None else image), label
        except ImageDecodeError as exc:
            return str(exc), label


def collate(batch: list[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
    """Stack images (lists of per-scale images stay lists); a decoding error becomes the batch."""
    errors = [image for image, _ in batch if isinstance(image, str)]
    labels = torch.tensor([label for _, label in batch])
    if errors:
        return errors[0], labels
    images = [image for image, _ in batch]
    return (images if isinstance(images[0], list) else torch.stack(images)), labels


class _FolderBatches:
    """What both streamed loaders share: the listed files, their labels, the DataLoader over an
    order, and the move of uint8 batches to the device."""

    def __init__(
        self, files: ImageFiles, transform: Callable[[Any], Any], spec: TrainBatchSpec | EvalBatchSpec, stats: NormStats
    ) -> None:
        self.dataset = FolderSplit(
            files.root,
            files.split,
            transform,
            dataset=files.dataset,
            subset=files.subset,
            in_chans=spec.in_chans,
            max_pixels=spec.max_pixels,
        )
        self.labels = torch.tensor([label for _, label in self.dataset.samples], dtype=torch.int64)  # (N,)
        self.stats = stats
        self._stats_on_device = stats.to(spec.device)
        self.batch_size, self.workers, self.device = spec.batch_size, spec.workers, torch.device(spec.device)

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.classes)

    def class_counts(self) -> torch.Tensor:
        """Images per class in the whole split (all ranks): (num_classes,) int64."""
        return torch.bincount(self.labels, minlength=len(self.classes))

    def _load(
        self, indices: list[int], generator: torch.Generator, *, drop_last: bool
    ) -> Iterator[tuple[Any, torch.Tensor]]:
        """(uint8 images, labels (B,)) of `indices` in batches, decoded by the workers, whose RNGs
        are seeded from a draw of `generator` (never of torch's global generator)."""
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=indices,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=drop_last,
            generator=generator,
            collate_fn=collate,
            persistent_workers=False,
        )
        for x, y in loader:
            if isinstance(x, str):
                raise DataError(f"{x}; replace or delete the file")
            yield x, y

    def _on_device(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """uint8 (B, C, S, S) or (B, 10, C, S, S) from the workers -> the device (channels_last if asked)."""
        x = x.to(self.device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class FolderTrainBatches(_FolderBatches):
    """Training batches (x (B, C, S, S) float normalised, y (B,) int64; soft (B, num_classes) float32
    with MixUp / CutMix) of one split of a tree, on `spec.device`: randomly cropped and flipped in
    the workers (`spec.augment`, `spec.hflip`), PCA lighting in the main process."""

    def __init__(self, files: ImageFiles, spec: TrainBatchSpec) -> None:
        if spec.stats is None:
            raise ConfigError("streamed training batches need normalisation stats (e.g. `imagenet_norm_stats`)")
        augmentation = spec.augmentation or Augmentation()
        policy = {"policy": augmentation.policy, "policy_magnitude": augmentation.policy_magnitude}
        transform = train_transform(spec.augment, spec.image_size, hflip=spec.hflip, **policy)
        super().__init__(files, transform, spec, spec.stats)
        self.spec = spec
        self.shuffler: DistributedSampler | None = None  # the plain random order: a permutation per epoch
        if spec.sampler == "random" and spec.repeats == 1:
            self.shuffler = DistributedSampler(
                self.dataset, num_replicas=spec.world_size, rank=spec.rank, shuffle=True, seed=spec.seed, drop_last=True
            )
        self.lighting = Lighting(spec.lighting if spec.augment != "none" and spec.in_chans == 3 else 0.0)
        self.per_batch = BatchAugment(augmentation, len(self.classes)) if augmentation.per_batch else None
        self.generator = torch.Generator().manual_seed(spec.seed)

    def __len__(self) -> int:
        """Batches per epoch for this rank (whole batches, the same on every rank)."""
        return self.spec.batches_per_epoch(len(self.dataset))

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's image indices for `epoch` in visiting order (the sampler's, as int64)."""
        if self.shuffler is None:  # balanced, or repeated augmentation
            return train_shard(self.labels, len(self.classes), self.spec, epoch)
        self.shuffler.set_epoch(epoch)
        indices = list(iter(self.shuffler))[: len(self) * self.batch_size]  # whole batches only
        return torch.tensor(indices, dtype=torch.int64)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches `start_batch`, `start_batch + 1`, ... of `epoch` (0-based)."""
        spec = self.spec
        # Workers' RNGs are seeded from a draw of this generator when iteration starts.
        self.generator.manual_seed(epoch_seed(spec.seed, epoch))
        indices = self.order(epoch)[start_batch * self.batch_size :].tolist()
        for batch, (x, y) in enumerate(self._load(indices, self.generator, drop_last=True), start=start_batch):
            seed = batch_seed(spec.seed, epoch, spec.rank, batch)
            x, y = self._prepare(x, seed), y.to(self.device, non_blocking=True)
            if self.per_batch is not None:  # erasing, MixUp / CutMix (soft targets)
                x, y = self.per_batch(x, y, seed)
                if spec.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _prepare(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """uint8 (B, C, S, S) from the workers -> normalised float on the device, lit by PCA noise
        drawn from `seed` (the batch's)."""
        stats = self._stats_on_device
        x = stats.apply(self._on_device(x, self.spec.channels_last))
        if self.lighting.alphastd > 0:
            x = self.lighting(x, stats.std, torch.Generator().manual_seed(seed))
        return x

    def __repr__(self) -> str:
        return (
            f"FolderTrainBatches({self.dataset.root}, n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"augment={self.spec.augment!r}, sampler={self.spec.sampler!r}, batches={len(self)}, "
            f"workers={self.workers}, device={self.device})"
        )


class FolderEvalBatches(_FolderBatches):
    """Evaluation batches (x float normalised, on `spec.device`; y (B,) int64) of one split of a tree,
    in listed order, every image kept.

    x is (B, C, S, S); for eval_mode "ten-crop" (B, 10, C, S, S); for "multi-scale" a list over
    images of lists over scales of (1, C, H_s, W_s) tensors.
    """

    def __init__(self, files: ImageFiles, spec: EvalBatchSpec) -> None:
        stats = spec.required_stats()
        if spec.eval_mode == "multi-scale" and stats.mean.shape[1:] != (1, 1):
            raise ConfigError(
                "multi-scale testing scores whole images of any size: it needs per-channel normalisation "
                f"(weights trained with data.normalize=channel), not statistics of shape {tuple(stats.mean.shape)}"
            )
        extra = {"scales": spec.scales} if spec.scales else {}
        transform = eval_transform(spec.image_size, spec.resize, mode=spec.eval_mode, **extra)
        super().__init__(files, transform, spec, stats)
        self.spec = spec
        self.shuffler: DistributedSampler | None = None  # several ranks: each a share (padded to equal length)
        if spec.world_size > 1:
            self.shuffler = DistributedSampler(
                self.dataset, num_replicas=spec.world_size, rank=spec.rank, shuffle=False, drop_last=False
            )

    def __len__(self) -> int:
        """Batches for this rank, the last one partial."""
        n = len(self.shuffler) if self.shuffler is not None else len(self.dataset)
        return -(-n // self.batch_size)

    def order(self, epoch: int = 0) -> torch.Tensor:
        """This rank's image indices, in listed order (as int64)."""
        indices = list(iter(self.shuffler)) if self.shuffler is not None else list(range(len(self.dataset)))
        return torch.tensor(indices, dtype=torch.int64)

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[EvalInput, torch.Tensor]]:
        """Yield batches `start_batch`, `start_batch + 1`, ... (the same for every epoch)."""
        # The transforms draw nothing; the generator only keeps the workers' seed draw off torch's global one.
        generator = torch.Generator().manual_seed(0)
        indices = self.order()[start_batch * self.batch_size :].tolist()
        for x, y in self._load(indices, generator, drop_last=False):
            yield self._prepare(x), y.to(self.device, non_blocking=True)

    def _prepare(self, x: torch.Tensor | list[list[torch.Tensor]]) -> EvalInput:
        """uint8 from the workers -> normalised float on the device."""
        stats = self._stats_on_device
        if isinstance(x, list):  # multi-scale: [image][scale] of (C, H, W)
            return [[stats.apply(s.to(self.device)[None]) for s in scales] for scales in x]
        x = self._on_device(x, self.spec.channels_last)
        if x.dim() == 5:  # ten-crop: (B, 10, C, S, S)
            return stats.apply(x.flatten(0, 1)).view(x.shape)
        return stats.apply(x)

    def __repr__(self) -> str:
        return (
            f"FolderEvalBatches({self.dataset.root}, n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"eval_mode={self.spec.eval_mode!r}, batches={len(self)}, workers={self.workers}, device={self.device})"
        )
