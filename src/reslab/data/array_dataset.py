"""`ArrayDataset`: a whole dataset as one uint8 tensor in memory, and what can be done to it whole.

Every small-image dataset (CIFAR, MNIST, a small ImageFolder tree, the synthetic one) decodes to
this one shape, so the cache, the fast batch loader and the tests deal with a single type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reslab.errors import DataError

# ITU-R 601-2 luma weights, the ones PIL's convert("L") uses, so that a CIFAR image turned grey
# here matches the same PNG turned grey by PIL.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Images converted per chunk so that the float copy stays small (chunk * C * H * W * 4 bytes).
_CHUNK = 1024


@dataclass
class ArrayDataset:
    """Images and labels held whole in memory (or memory-mapped from the cache)."""

    images: torch.Tensor  # (N, C, H, W) uint8, contiguous
    labels: torch.Tensor  # (N,) int64, each in [0, len(classes))
    classes: list[str]  # class names; index = label
    name: str  # "cifar10", "fashion-mnist", "imagefolder:/path", "synthetic", ...
    synthetic: bool = False  # True only for made-up data; results on it mean nothing

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"labels must be ({len(self.images)},) int64, got {tuple(self.labels.shape)} {self.labels.dtype}"
            )
        if not self.images.is_contiguous():
            self.images = self.images.contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        _, c, h, w = self.images.shape
        return (c, h, w)

    def subset(self, indices: torch.Tensor, name: str | None = None) -> ArrayDataset:
        """The images at `indices` (copied, so the result is contiguous and owns its memory)."""
        return ArrayDataset(
            images=self.images[indices].contiguous(),
            labels=self.labels[indices].clone(),
            classes=list(self.classes),
            name=name or self.name,
            synthetic=self.synthetic,
        )


def train_val_split(ds: ArrayDataset, val_size: int, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Hold out `val_size` images at random: the paper's CIFAR-10 split is 45k train / 5k val.

    The permutation comes from its own `torch.Generator`, so the split depends on `seed` only,
    never on the global RNG or on what ran before. Both halves keep the original order within.
    """
    train_idx, val_idx = random_split_indices(len(ds), val_size, seed)
    return ds.subset(train_idx, f"{ds.name}[train-split]"), ds.subset(val_idx, f"{ds.name}[val-split]")


def random_split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) of `n` items, `val_size` of them held out at random; both sorted.

    `train_val_split`'s draw, shared by every source that holds out a random val part (an
    ImageFolder tree or a CSV listing under data.split=paper), in memory or streamed.
    """
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    val_idx, _ = perm[:val_size].sort()
    train_idx, _ = perm[val_size:].sort()
    return train_idx, val_idx


def stratified_split_indices(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices), both sorted: of each class, round(val_fraction * n_class)
    images (rounding half up) held out, at least 1 where the class has 2 or more images and never
    all of them, so every class keeps a training image.

    One `torch.Generator` seeded with `seed` draws a permutation of each class's images in turn
    (classes in label order); the first k of it are held out. So the split is a pure function of
    (labels, val_fraction, seed), and the two parts are disjoint and cover every index.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in torch.unique(labels).tolist():  # sorted
        members = (labels == label).nonzero().flatten()
        n = len(members)
        k = min(math.floor(val_fraction * n + 0.5), n - 1)
        if n >= 2:
            k = max(k, 1)
        perm = torch.randperm(n, generator=generator)
        held.append(members[perm[:k]])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    if held:
        is_val[torch.cat(held)] = True
    return (~is_val).nonzero().flatten(), is_val.nonzero().flatten()


def stratified_fold_indices(
    labels: torch.Tensor, folds: int, fold: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices), both sorted, of fold `fold` (1..folds) of a stratified K-fold
    split: each class's images in a seeded random order are dealt to the folds in turn, each class
    starting where the previous one stopped, so every fold holds about 1/K of every class and of the
    whole. The K val parts are disjoint and together cover every index; a pure function of
    (labels, folds, seed), as `stratified_split_indices`."""
    if not 2 <= folds <= len(labels) or not 1 <= fold <= folds:
        raise ValueError(f"fold {fold} of {folds} does not fit {len(labels)} images")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    which = torch.empty(len(labels), dtype=torch.int64)
    start = 0
    for label in torch.unique(labels).tolist():  # sorted
        members = (labels == label).nonzero().flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        which[order] = (start + torch.arange(len(order))) % folds
        start = (start + len(order)) % folds
    is_val = which == fold - 1
    return (~is_val).nonzero().flatten(), is_val.nonzero().flatten()


def convert_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, in_chans, H, W) uint8: grey to RGB by copying, RGB to grey by luma."""
    channels = images.shape[1]
    if channels == in_chans:
        return images
    if channels == 1:
        return images.expand(-1, in_chans, -1, -1).contiguous()
    if channels == 3 and in_chans == 1:
        weights = torch.tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1)
        grey = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
        for start in range(0, len(images), _CHUNK):
            chunk = images[start : start + _CHUNK].float()
            grey[start : start + _CHUNK] = (chunk * weights).sum(1, keepdim=True).round_()
        return grey
    raise DataError(f"cannot convert {channels}-channel images to {in_chans} channels; use 1 or 3")
