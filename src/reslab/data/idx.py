"""MNIST and Fashion-MNIST from IDX files (http://yann.lecun.com/exdb/mnist/), gzipped or not.

An IDX file is a big-endian header, then the raw values:
    bytes 0-1  zero
    byte  2    value type (0x08 = unsigned byte, the only one these datasets use)
    byte  3    number of dimensions
    then one uint32 per dimension, then prod(dims) values, row-major.
So images are magic 2051 (0x00000803, dims N, 28, 28) and labels magic 2049 (0x00000801, dims N).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from reslab.data.array_dataset import ArrayDataset
from reslab.data.download import fetch
from reslab.errors import DataError

Split = Literal["train", "test"]

IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension

# Debian's `dataset-fashion-mnist` package installs the four .gz files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(digit) for digit in range(10)]


@dataclass(frozen=True)
class IdxVariant:
    name: str  # "mnist" | "fashion-mnist"
    torchvision_folder: str  # torchvision keeps raw files in <root>/<folder>/raw
    classes: list[str]
    home: str  # where to download by hand


IDX_VARIANTS: dict[str, IdxVariant] = {
    "mnist": IdxVariant("mnist", "MNIST", MNIST_CLASSES, "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": IdxVariant(
        "fashion-mnist",
        "FashionMNIST",
        FASHION_MNIST_CLASSES,
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
}


@dataclass(frozen=True)
class IdxFiles:
    images: Path
    labels: Path


def _stems(split: Split) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_in(directory: Path, stem: str) -> Path | None:
    # The plain file first: torchvision unpacks next to the .gz, and plain reads faster.
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def search_dirs(name: str, data_dir: Path) -> list[Path]:
    """Directories searched in order: `data_dir`, torchvision's layout, then Debian's package."""
    variant = IDX_VARIANTS[name]
    dirs = [data_dir, data_dir / variant.torchvision_folder / "raw"]
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def find_idx_files(name: str, split: Split, data_dir: Path, *, download: bool) -> IdxFiles:
    """The images and labels files of one split; both must sit in the same directory."""
    image_stem, label_stem = _stems(split)

    def lookup() -> IdxFiles | None:
        for directory in search_dirs(name, data_dir):
            images, labels = _find_in(directory, image_stem), _find_in(directory, label_stem)
            if images and labels:
                return IdxFiles(images, labels)
        return None

    found = lookup()
    if found is None and download:
        _download(name, data_dir)
        found = lookup()
    if found is None:
        searched = ", ".join(str(d) for d in search_dirs(name, data_dir))
        hint = "install Debian's package (apt-get install dataset-fashion-mnist), " if name == "fashion-mnist" else ""
        raise DataError(
            f"{name} {split} files not found: expected {image_stem}[.gz] and {label_stem}[.gz] "
            f"in one of: {searched}. To get them: {hint}rerun with --set data.download=true, "
            f"or download them from {IDX_VARIANTS[name].home} and pass --data-dir DIR."
        )
    return found


def _download(name: str, data_dir: Path) -> None:
    import torchvision.datasets as tvd  # imported here: only needed when downloading

    dataset_class = tvd.FashionMNIST if name == "fashion-mnist" else tvd.MNIST

    def both_splits() -> None:
        for train in (True, False):
            dataset_class(root=str(data_dir), train=train, download=True)

    by_hand = f"Download the four idx files from {IDX_VARIANTS[name].home} and pass --data-dir DIR."
    fetch(both_splits, name, data_dir, by_hand)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                return file.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: broken gzip stream ({err}); the file is corrupt or truncated, delete it and download it again"
        ) from err
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """One IDX file -> uint8 array of its declared shape; header and length checked."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header; file is corrupt")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: IDX magic number {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'}); wrong or corrupt file"
        )
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: header cut short; the file is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_size = header_size + int(np.prod(dims))
    if len(raw) != expected_size:
        raise DataError(
            f"{path}: header declares shape {dims} ({expected_size} bytes) but the file holds "
            f"{len(raw)} bytes; the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def load_idx_dataset(name: str, split: Split, data_dir: Path, *, download: bool = False) -> ArrayDataset:
    """MNIST / Fashion-MNIST `split` as an `ArrayDataset` of (N, 1, 28, 28) uint8 images."""
    variant = IDX_VARIANTS[name]
    files = find_idx_files(name, split, data_dir, download=download)
    images = read_idx(files.images, IMAGES_MAGIC)
    labels = read_idx(files.labels, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{files.images} holds {len(images)} images but {files.labels} holds {len(labels)} "
            "labels; the two files do not belong together"
        )
    if len(labels) and labels.max() >= len(variant.classes):
        raise DataError(f"{files.labels}: labels outside [0, {len(variant.classes)}); corrupt file")
    return ArrayDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),  # (N, 28, 28) -> (N, 1, 28, 28)
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(variant.classes),
        name=name,
    )
