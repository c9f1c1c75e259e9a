"""Datasets and loaders.

Small images (CIFAR, MNIST, Fashion-MNIST, small ImageFolder trees) take the fast path:
    ds = load_cached("cifar10", "train", data_dir)          # decode once, then memory-map
    train, val = train_val_split(ds, 5000, seed=0)          # the paper's 45k / 5k split
    batches = InMemoryBatches(train, 128, train=True, device="cuda")
    for images, labels in batches.epoch(epoch): ...
Large ImageFolder trees (ImageNet) go through `folder_batches.FolderBatches`, which decodes in
workers. Image files come from an ImageFolder tree or a CSV of path,label[,split] rows (`csv`),
listed by one function (`folder.list_samples`) for both loaders. `sources.DataSource` names a
run's parts (train, val, test), says which loader a run uses, for training and every evaluation.
`detect.dataset_in_dir` says which own-image dataset (ImageFolder tree, CSV) a data directory holds.
"""

from reslab.data.array_dataset import ArrayDataset, convert_channels, stratified_split_indices, train_val_split
from reslab.data.batches import (
    InMemoryBatches,
    balanced_order,
    draw_augmentation,
    normalize_crop_flip,
)
from reslab.data.cache import default_cache_dir, load_cached
from reslab.data.datasets import load_dataset, make_synthetic, source_files
from reslab.data.norm import NormStats, compute_norm_stats
from reslab.data.preprocess import Preprocess, load_image, resize_array

__all__ = [
    "ArrayDataset",
    "InMemoryBatches",
    "balanced_order",
    "NormStats",
    "compute_norm_stats",
    "convert_channels",
    "default_cache_dir",
    "draw_augmentation",
    "load_cached",
    "load_dataset",
    "make_synthetic",
    "normalize_crop_flip",
    "resize_array",
    "Preprocess",
    "load_image",
    "source_files",
    "stratified_split_indices",
    "train_val_split",
]
