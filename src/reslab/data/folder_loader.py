"""A DataLoader over a large ImageFolder tree (ImageNet and the like), decoding in workers.

Use this when the images do not fit in memory as uint8; otherwise `load_dataset("imagefolder",
...)` + `InMemoryBatches` is much faster. Layout and class numbering are those of
`reslab.data.folder`: root/train/<class>/..., root/val/<class>/..., classes from train/.

Epochs: call `set_folder_epoch(loader, epoch)` before iterating epoch `epoch`; it sets the
sampler's shuffle and reseeds the workers' augmentation, so both depend on (seed, epoch) only.
With workers=0 the transforms draw from the main process's global torch RNG instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.datasets import ImageFolder

from reslab.data.folder import list_image_files, split_dir_name
from reslab.data.folder_transforms import EvalMode, FolderAugment, eval_transform, train_transform
from reslab.data.norm import NormStats
from reslab.errors import DataError

Split = Literal["train", "test"]


def load_rgb(path: str) -> Image.Image:
    """PIL loader that names the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({err}); replace or delete the file") from err


class FolderSplit(ImageFolder):
    """torchvision's ImageFolder over root/<train|val>, listed by `list_image_files`.

    Differences from ImageFolder: both splits number classes by train/'s folders (a class
    missing from val/ does not shift the labels), and problems raise `DataError`s that name
    the directory or file.
    """

    def __init__(self, root: str | Path, split: Split, transform: Callable[[Image.Image], Any] | None) -> None:
        self._listing = list_image_files(Path(root), split)  # read by the two overrides below
        super().__init__(str(Path(root) / split_dir_name(split)), transform=transform, loader=load_rgb)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = self._listing[1]
        return classes, {name: label for label, name in enumerate(classes)}

    def make_dataset(self, directory: str | Path, *args: Any, **kwargs: Any) -> list[tuple[str, int]]:
        return [(str(path), label) for path, label in self._listing[0]]


def collate_multi_scale(
    batch: list[tuple[list[torch.Tensor], int]],
) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Images of one batch differ in size at each scale, so keep them as lists: [image][scale]."""
    return [images for images, _ in batch], torch.tensor([label for _, label in batch])


def make_folder_loader(
    root: str | Path,
    split: Split,
    *,
    batch_size: int,
    train: bool,
    augment: FolderAugment = "scale",  # "scale" (paper: shorter side 256..480) | "rrc" | "none"
    image_size: int = 224,  # side of the square crops
    workers: int = 2,  # DataLoader worker processes; 0 decodes in the main process
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    eval_mode: EvalMode = "center",  # "center" | "ten-crop" | "multi-scale"; only when train=False
    lighting: float = 0.1,  # PCA colour augmentation strength (alphastd); 0 turns it off
    scale_range: tuple[int, int] | None = None,  # None: [256, 480] scaled by image_size / 224
    stats: NormStats | None = None,  # per-channel stats; None: ImageNet's
) -> DataLoader:
    """Batches of (images, labels): images (B, C, S, S), (B, 10, C, S, S) for ten-crop, or
    lists for multi-scale (use batch_size=1 or score image by image).

    Training shuffles through a DistributedSampler (also for one process, so the order is a
    function of (seed, epoch)) and drops the last partial batch. With world_size > 1 at test
    time, DistributedSampler pads the split with repeated images to divide it evenly; count
    them out or evaluate on one rank when exact numbers matter.
    """
    transform = (
        train_transform(augment, image_size, scale_range=scale_range, lighting=lighting, stats=stats)
        if train
        else eval_transform(image_size, mode=eval_mode, stats=stats)
    )
    dataset = FolderSplit(root, split, transform)
    sampler: DistributedSampler[tuple[Any, int]] | None = None
    if train or world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,  # the sampler shuffles
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=train,
        collate_fn=collate_multi_scale if (not train and eval_mode == "multi-scale") else None,
        generator=torch.Generator().manual_seed(seed),
    )


def set_folder_epoch(loader: DataLoader, epoch: int) -> None:
    """Make epoch `epoch`'s order and worker augmentation seeds depend on (seed, epoch) only."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
        base_seed = loader.sampler.seed
    else:
        base_seed = 0
    if loader.generator is not None:
        # Workers' RNGs are seeded from a draw of this generator when iteration starts.
        loader.generator.manual_seed(base_seed * 1_000_003 + epoch)
