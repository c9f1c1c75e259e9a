"""`InMemoryBatches`' interface over an ImageFolder tree decoded in DataLoader workers.

`reslab train` with `data.in_memory=false` (the `imagenet-paper` recipe) trains through this:
the same `len()`, `order(epoch)` and `epoch(epoch, start_batch)` as the in-memory path, so the
engine, checkpoints and resume need no second code path.

Order and augmentation: epoch e visits the training images in a permutation drawn from
(seed, e) (a `DistributedSampler`, so every rank gets its own shard and the last partial batch
is dropped). Each epoch builds a DataLoader over that epoch's indices from `start_batch` on, so
a run resumed mid-epoch continues with the images it had not seen yet, without decoding the
skipped ones. The workers' random augmentation is seeded from (seed, epoch); after a mid-epoch
resume the draws differ from an uninterrupted run's (workers pick up other batches), so such a
resume continues the same schedule and data order but is not bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from reslab.data.folder_loader import FolderSplit, make_folder_loader, set_folder_epoch
from reslab.data.folder_transforms import imagenet_norm_stats
from reslab.data.norm import NormStats


class FolderBatches:
    """Batches (x float (B, C, S, S) normalised, on `device`; y int64) of one split of a tree."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        batch_size: int,
        train: bool,
        augment: str = "scale",
        image_size: int = 224,
        workers: int = 2,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
    ) -> None:
        self.stats: NormStats = imagenet_norm_stats()
        self.loader = make_folder_loader(
            root,
            split,
            batch_size=batch_size,
            train=train,
            augment=augment,  # type: ignore[arg-type]
            image_size=image_size,
            workers=workers,
            seed=seed,
            rank=rank,
            world_size=world_size,
            stats=self.stats,
        )
        self.dataset: FolderSplit = self.loader.dataset  # type: ignore[assignment]
        self.batch_size, self.train, self.workers = batch_size, train, workers
        self.device, self.channels_last = torch.device(device), channels_last

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.classes)

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return len(self.loader)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's image indices for `epoch` in visiting order (the sampler's, as int64)."""
        sampler = self.loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
            indices = list(iter(sampler))
        else:
            indices = list(range(len(self.dataset)))
        if self.train:  # whole batches only, as the loader drops the last partial one
            indices = indices[: len(self) * self.batch_size]
        return torch.tensor(indices, dtype=torch.int64)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches `start_batch`, `start_batch + 1`, ... of `epoch` (0-based)."""
        set_folder_epoch(self.loader, epoch)  # seeds the workers' augmentation from (seed, epoch)
        indices = self.order(epoch)[start_batch * self.batch_size :].tolist()
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=indices,
            num_workers=self.workers,
            pin_memory=self.loader.pin_memory,
            drop_last=self.train,
            generator=self.loader.generator,
            persistent_workers=False,
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)

    def __repr__(self) -> str:
        return (
            f"FolderBatches({self.dataset.root}, n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"train={self.train}, batches={len(self)}, workers={self.workers}, device={self.device})"
        )
