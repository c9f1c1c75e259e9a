"""`FolderBatches`: image files decoded in DataLoader workers, with `InMemoryBatches`' interface.

For trees that do not fit in memory as uint8 (ImageNet); `reslab train` with
`data.in_memory=false` (the `imagenet-paper` recipe) trains through this, `reslab eval` evaluates
through it. The images are one split of an ImageFolder tree or a CSV listing
(`reslab.data.folder.list_samples`: classes from train/ or the CSV's training rows), optionally
restricted to a subset of it (a val part carved from train/).

The same `len()`, `order(epoch)` and `epoch(epoch, start_batch)` as the in-memory path, so the
trainer, checkpoints and resume need no second code path. Workers decode (the one robust decoder)
and crop (`reslab.data.folder_transforms`), yielding uint8; the main process normalises each batch
with `NormStats.apply`, the affine every consumer uses, on the target device.

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
from reslab.data.batches import balanced_order, batch_seed, epoch_seed, repeated_order
from reslab.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from reslab.data.folder import Split, list_samples
from reslab.data.folder_transforms import Lighting, eval_transform, train_transform
from reslab.data.norm import NormStats
from reslab.data.preprocess import channel_mode
from reslab.errors import ConfigError, DataError
from reslab.vocab import SAMPLERS


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


class FolderBatches:
    """Batches (x float normalised, on `device`; y int64) of one split of a tree.

    x is (B, C, S, S); for eval_mode "ten-crop" (B, 10, C, S, S); for "multi-scale" a list over
    images of lists over scales of (1, C, H_s, W_s) tensors.
    """

    def __init__(
        self,
        root: str | Path,
        split: Split,
        *,
        batch_size: int,
        train: bool,
        stats: NormStats,
        dataset: str = "imagefolder",  # or "csv": `root` is then the CSV file
        subset: torch.Tensor | None = None,  # only these indices of the split's listing (a carved part)
        augment: str = "scale",  # training: "scale" (paper: shorter side 256..480) | "rrc" | "none"
        hflip: bool = True,  # training: random horizontal flips (False: data.hflip=false)
        sampler: str = "random",  # training: "random" (a permutation per epoch) | "balanced"
        image_size: int = 224,  # side of the square crops
        resize: str = "shorter-256-center-crop",  # evaluation: the `fit_image` rule of the centre crop
        eval_mode: str = "center",  # evaluation: "center" | "ten-crop" | "multi-scale"
        scales: tuple[int, ...] | None = None,  # multi-scale: shorter sides (None: the paper's)
        lighting: float = 0.1,  # training: PCA colour augmentation strength (alphastd); 0 turns it off
        in_chans: int = 3,
        workers: int = 2,  # DataLoader worker processes; 0 decodes in the main process
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        repeats: int = 1,  # training: repeated augmentation, each image this many times an epoch (1 = off)
        augmentation: Augmentation | None = None,  # training: policy, erasing, mixing
    ) -> None:
        if eval_mode == "multi-scale" and stats.mean.shape[1:] != (1, 1):
            raise ConfigError(
                "multi-scale testing scores whole images of any size: it needs per-channel normalisation "
                f"(weights trained with data.normalize=channel), not statistics of shape {tuple(stats.mean.shape)}"
            )
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        augmentation = augmentation if train and augmentation is not None else Augmentation()
        if train:
            policy = {"policy": augmentation.policy, "policy_magnitude": augmentation.policy_magnitude}
            transform = train_transform(augment, image_size, hflip=hflip, **policy)
        else:
            extra = {"scales": scales} if scales else {}
            transform = eval_transform(image_size, resize, mode=eval_mode, **extra)
        self.dataset = FolderSplit(
            root, split, transform, dataset=dataset, subset=subset, in_chans=in_chans, max_pixels=max_pixels
        )
        self.labels = torch.tensor([label for _, label in self.dataset.samples], dtype=torch.int64)  # (N,)
        self.sampler = sampler if train else "random"
        self.repeats = repeats if train else 1
        self.world_size = world_size
        self.shuffler: DistributedSampler | None = None
        if (train and self.sampler == "random" and self.repeats == 1) or (not train and world_size > 1):
            self.shuffler = DistributedSampler(
                self.dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train
            )
        self.stats = stats
        self._stats_on_device = stats.to(device)
        self.lighting = Lighting(lighting if train and augment != "none" and in_chans == 3 else 0.0)
        self.per_batch = BatchAugment(augmentation, len(self.classes)) if augmentation.per_batch else None
        self.batch_size, self.train, self.workers = batch_size, train, workers
        self.seed, self.rank, self.eval_mode = seed, rank, eval_mode
        self.device, self.channels_last = torch.device(device), channels_last
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.classes)

    def class_counts(self) -> torch.Tensor:
        """Images per class in the whole split (all ranks): (num_classes,) int64."""
        return torch.bincount(self.labels, minlength=len(self.classes))

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        if self.sampler == "balanced" or self.repeats > 1:  # every rank the same whole batches, as DistributedSampler
            return len(self.dataset) // self.world_size // self.batch_size
        n = len(self.shuffler) if self.shuffler is not None else len(self.dataset)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's image indices for `epoch` in visiting order (the sampler's, as int64)."""
        if self.sampler == "balanced" or self.repeats > 1:
            if self.sampler == "balanced":
                order = balanced_order(self.labels, len(self.classes), self.seed, epoch)
            else:
                generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
                order = torch.randperm(len(self.labels), generator=generator)
            order = repeated_order(order, self.repeats)
            return order[: len(self) * self.batch_size * self.world_size][self.rank :: self.world_size]
        if self.shuffler is not None:
            self.shuffler.set_epoch(epoch)
            indices = list(iter(self.shuffler))
        else:
            indices = list(range(len(self.dataset)))
        if self.train:  # whole batches only, as the loader drops the last partial one
            indices = indices[: len(self) * self.batch_size]
        return torch.tensor(indices, dtype=torch.int64)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Any, torch.Tensor]]:
        """Yield batches `start_batch`, `start_batch + 1`, ... of `epoch` (0-based)."""
        # Workers' RNGs are seeded from a draw of this generator when iteration starts.
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        indices = self.order(epoch)[start_batch * self.batch_size :].tolist()
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=indices,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=self.train,
            generator=self.generator,
            collate_fn=collate,
            persistent_workers=False,
        )
        for batch, (x, y) in enumerate(loader, start=start_batch):
            if isinstance(x, str):
                raise DataError(f"{x}; replace or delete the file")
            x, y = self._prepare(x, epoch, batch), y.to(self.device, non_blocking=True)
            if self.per_batch is not None:  # erasing, MixUp / CutMix (soft targets)
                x, y = self.per_batch(x, y, batch_seed(self.seed, epoch, self.rank, batch))
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _prepare(self, x: Any, epoch: int, batch: int) -> Any:
        """uint8 from the workers -> normalised float on the device (+ lighting when training)."""
        stats = self._stats_on_device
        if isinstance(x, list):  # multi-scale: [image][scale] of (C, H, W)
            return [[stats.apply(s.to(self.device)[None]) for s in scales] for scales in x]
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.dim() == 5:  # ten-crop: (B, 10, C, S, S)
            return stats.apply(x.flatten(0, 1)).view(x.shape)
        x = stats.apply(x)
        if self.lighting.alphastd > 0:
            generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, self.rank, batch))
            x = self.lighting(x, stats.std, generator)
        return x

    def __repr__(self) -> str:
        return (
            f"FolderBatches({self.dataset.root}, n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"train={self.train}, batches={len(self)}, workers={self.workers}, device={self.device})"
        )
