"""Datasets and loaders.

Small images (CIFAR, MNIST, Fashion-MNIST, small ImageFolder trees) take the fast path:
    ds = load_cached("cifar10", "train", data_dir)          # decode once, then memory-map
    train, val = train_val_split(ds, 5000, seed=0)          # the paper's 45k / 5k split
    batches = InMemoryTrainBatches(train, TrainBatchSpec(128, device="cuda"))
    for images, labels in batches.epoch(epoch): ...
    test = InMemoryEvalBatches(val, EvalBatchSpec(256, stats=batches.stats, device="cuda"))
Large ImageFolder trees (ImageNet) go through `folder_batches.FolderTrainBatches` and
`FolderEvalBatches`, which decode in workers; all four loaders meet the protocols of `spec`
(`TrainBatches`, `EvalBatches`), each built from one frozen spec. Image files come from an
ImageFolder tree or a CSV of path,label[,split] rows (`csv`), listed by one function
(`folder.list_samples`) for both loaders. `sources.DataSource` names a
run's parts (train, val, test), says which loader a run uses, for training and every evaluation.
`detect.dataset_in_dir` says which own-image dataset (ImageFolder tree, CSV) a data directory holds.
"""

from reslab.data.array_dataset import ArrayDataset, convert_channels, stratified_split_indices, train_val_split
from reslab.data.batches import (
    InMemoryEvalBatches,
    InMemoryTrainBatches,
    balanced_order,
    draw_augmentation,
    normalize_crop_flip,
)
from reslab.data.cache import default_cache_dir, load_cached
from reslab.data.datasets import load_dataset, make_synthetic, source_files
from reslab.data.norm import NormStats, compute_norm_stats
from reslab.data.preprocess import Preprocess, load_image, resize_array
from reslab.data.spec import EvalBatches, EvalBatchSpec, TrainBatches, TrainBatchSpec

__all__ = [
    "ArrayDataset",
    "EvalBatchSpec",
    "EvalBatches",
    "InMemoryEvalBatches",
    "InMemoryTrainBatches",
    "TrainBatchSpec",
    "TrainBatches",
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
