"""Datasets and loaders.

Small images (CIFAR, MNIST, Fashion-MNIST, small ImageFolder trees) take the fast path:
    ds = load_cached("cifar10", "train", data_dir)          # decode once, then memory-map
    train, val = train_val_split(ds, 5000, seed=0)          # the paper's 45k / 5k split
    batches = InMemoryBatches(train, 128, train=True, device="cuda")
    for images, labels in batches.epoch(epoch): ...
Large ImageFolder trees (ImageNet) go through `make_folder_loader`, which decodes in workers.
"""

from reslab.data.array_dataset import ArrayDataset, convert_channels, resize_images, train_val_split
from reslab.data.batches import (
    AUGMENT_KINDS,
    InMemoryBatches,
    draw_augmentation,
    normalize_crop_flip,
)
from reslab.data.cache import default_cache_dir, load_cached
from reslab.data.datasets import DATASET_NAMES, load_dataset, make_synthetic, source_files
from reslab.data.norm import NORMALIZE_KINDS, NormStats, compute_norm_stats

# The folder loader needs torchvision (about 2 s to import); load it only when asked for.
_LAZY = {
    "make_folder_loader": "folder_loader",
    "set_folder_epoch": "folder_loader",
    "IMAGENET_MEAN": "folder_transforms",
    "IMAGENET_STD": "folder_transforms",
    "Lighting": "folder_transforms",
    "MultiScale": "folder_transforms",
    "RandomShorterSideResize": "folder_transforms",
    "eval_transform": "folder_transforms",
    "imagenet_norm_stats": "folder_transforms",
    "train_transform": "folder_transforms",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"reslab.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'reslab.data' has no attribute {name!r}")


__all__ = [
    "AUGMENT_KINDS",
    "DATASET_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE_KINDS",
    "ArrayDataset",
    "InMemoryBatches",
    "Lighting",
    "MultiScale",
    "NormStats",
    "RandomShorterSideResize",
    "compute_norm_stats",
    "convert_channels",
    "default_cache_dir",
    "draw_augmentation",
    "eval_transform",
    "imagenet_norm_stats",
    "load_cached",
    "load_dataset",
    "make_folder_loader",
    "make_synthetic",
    "normalize_crop_flip",
    "resize_images",
    "set_folder_epoch",
    "source_files",
    "train_transform",
    "train_val_split",
]
