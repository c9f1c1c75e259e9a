"""One entry point, `load_dataset`, from a dataset name to an in-memory `ArrayDataset`.

    cifar10, cifar100      official python pickle batches            (N, 3, 32, 32)
    fashion-mnist, mnist   IDX files, gzipped or not                 (N, 1, 28, 28)
    imagefolder            root/{train,val,test}/<class>/*           (N, C, S, S)
    csv                    path,label[,split] rows of a CSV file     (N, C, S, S)
    synthetic              seeded random images for smoke tests      (N, C, S, S)

A split is a part of the dataset as stored: "train" and "test" for the array datasets (CIFAR's
test batch, MNIST's t10k files); "train", "val" and "test" for image files (a tree's folders, a
CSV's split column; only "train" is required). `stored_splits` says which a dataset has.

`image_size` and `in_chans` adapt any of them to what a network expects (e.g. Fashion-MNIST as
3 x 32 x 32). `source_files` lists the files a dataset is read from, for the cache's fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import torch

from reslab.data.array_dataset import ArrayDataset, convert_channels
from reslab.data.cifar import CIFAR_LAYOUTS, find_cifar_files, load_cifar
from reslab.data.folder import list_samples, load_image_files, stored_file_splits
from reslab.data.idx import IDX_VARIANTS, find_idx_files, load_idx_dataset
from reslab.data.preprocess import resize_array
from reslab.errors import DataError
from reslab.vocab import DATASETS

Split = Literal["train", "val", "test"]

# Datasets of image files listed on disk (decoded into memory, or streamed by DataLoader workers).
FILE_DATASETS = ("imagefolder", "csv")
ARRAY_SPLITS = ("train", "test")


# `data_dir=None` means $RESLAB_DATA_DIR, else ./data (torchvision's habit; ignored by git).
DEFAULT_DATA_DIR = Path("data")

SYNTHETIC_CLASSES = 10
SYNTHETIC_NOISE = 40.0  # std of the per-pixel noise, in uint8 units; the class colour stays visible


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("RESLAB_DATA_DIR", DEFAULT_DATA_DIR)).expanduser()


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def check_split(name: str, split: str) -> None:
    valid = ("train", "val", "test") if name in FILE_DATASETS else ARRAY_SPLITS
    if split not in valid:
        raise DataError(f"{name} has no {split!r} split; its splits: {', '.join(valid)}")


def stored_splits(name: str, data_dir: str | Path | None) -> tuple[str, ...]:
    """The splits dataset `name` has on disk: ("train", "test") for the array datasets; for image
    files "train" and those of "val", "test" that the tree has folders (the CSV has rows) for."""
    check_name(name)
    if name in FILE_DATASETS:
        return stored_file_splits(name, resolve_data_dir(data_dir))
    return ARRAY_SPLITS


def source_files(name: str, split: Split, data_dir: str | Path | None, *, download: bool = False) -> list[Path]:
    """The files `load_dataset(name, split, data_dir)` reads (downloading them first if asked).

    Empty for "synthetic", which reads nothing. Raises the same `DataError` as `load_dataset`
    when the files are missing.
    """
    check_name(name)
    check_split(name, split)
    root = resolve_data_dir(data_dir)
    if name in CIFAR_LAYOUTS:
        files = find_cifar_files(name, split, root, download=download)
        return [*files.batches, files.meta]
    if name in IDX_VARIANTS:
        idx_files = find_idx_files(name, split, root, download=download)
        return [idx_files.images, idx_files.labels]
    if name in FILE_DATASETS:
        samples, _ = list_samples(name, root, split)
        return ([root] if name == "csv" else []) + [path for path, _ in samples]  # a CSV's labels are in it
    return []


def make_synthetic(
    split: Split, size: int = 512, *, image_size: int = 32, in_chans: int = 3, seed: int = 0
) -> ArrayDataset:
    """Random images whose class sets the mean colour: learnable in a few steps, for smoke tests.

    The class colours depend on `seed` only, the images also on `split`, so train and test
    differ but share one pattern.
    """
    colour_gen = torch.Generator().manual_seed(seed)
    colours = torch.randint(40, 216, (SYNTHETIC_CLASSES, in_chans, 1, 1), generator=colour_gen)
    image_gen = torch.Generator().manual_seed(seed * 2 + (split == "test") + 1)
    labels = torch.randint(0, SYNTHETIC_CLASSES, (size,), generator=image_gen)
    noise = torch.randn((size, in_chans, image_size, image_size), generator=image_gen)
    images = (colours[labels].float() + SYNTHETIC_NOISE * noise).round_().clamp_(0, 255)
    return ArrayDataset(
        images=images.to(torch.uint8),
        labels=labels,
        classes=[f"class{i}" for i in range(SYNTHETIC_CLASSES)],
        name="synthetic",
        synthetic=True,
    )


def load_dataset(
    name: str,
    split: Split,
    data_dir: str | Path | None,
    *,
    download: bool = False,
    image_size: int | None = None,
    in_chans: int | None = None,
    synthetic_size: int = 512,
    resize: str = "shorter-center-crop",
) -> ArrayDataset:
    """Decode dataset `name` ("train" or "test" split) into memory.

    data_dir:       where the files are; None means $RESLAB_DATA_DIR or ./data. Fashion-MNIST
                    is also looked for in Debian's /usr/share/datasets/fashion-mnist.
    download:       fetch CIFAR / MNIST with torchvision when the files are missing.
    image_size:     side of the square images returned, by the `resize` rule of
                    `reslab.data.preprocess` (default: shorter side, then centre crop); None keeps
                    the native size (imagefolder: all files must share one size).
    in_chans:       1 or 3; grey images are repeated to 3 channels, RGB turned grey by luma.
    synthetic_size: number of images of the "synthetic" dataset.

    For imagefolder `split` is the tree's folder of that name; for csv the rows of that split.
    Raises `DataError` for an unknown name, missing files (saying where it looked and how to get
    them) or corrupt files.
    """
    check_name(name)
    check_split(name, split)
    root = resolve_data_dir(data_dir)
    if name == "synthetic":
        return make_synthetic(split, synthetic_size, image_size=image_size or 32, in_chans=in_chans or 3)
    if name in FILE_DATASETS:
        # Resizing and channel conversion happen in PIL while decoding.
        samples, classes = list_samples(name, root, split)
        where = root if name == "csv" else root / split
        return load_image_files(
            samples,
            classes,
            f"{name}:{root}",
            image_size=image_size,
            in_chans=in_chans or 3,
            resize=resize,
            where=where,
        )
    if name in CIFAR_LAYOUTS:
        ds = load_cifar(name, split, root, download=download)
    else:
        ds = load_idx_dataset(name, split, root, download=download)
    if in_chans is not None:
        ds.images = convert_channels(ds.images, in_chans)
    if image_size is not None:
        ds.images = resize_array(ds.images, image_size, resize)
    return ds


def dataset_sha256(name: str, data_dir: str | Path | None, *, listing: bool = False) -> str:
    """SHA-256 over a dataset's source files (every stored split, sorted by path), so weights name
    exactly the data they were trained on; "synthetic" for the smoke-test set. With `listing`
    (a tree streamed from disk, ImageNet scale: reading every byte again would take longer than
    an epoch) it is "listing:" + the SHA-256 of each file's path and size instead."""
    if name == "synthetic":
        return "synthetic"
    digest = hashlib.sha256()
    files = {path for split in stored_splits(name, data_dir) for path in source_files(name, split, data_dir)}
    if listing:
        root = resolve_data_dir(data_dir)
        base = root.parent if name == "csv" else root
        for path in sorted(files):
            shown = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix()
            digest.update(f"{shown}\t{path.stat().st_size}\n".encode())
        return "listing:" + digest.hexdigest()
    for path in sorted(files):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
