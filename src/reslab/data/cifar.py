"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches.

On disk (https://www.cs.toronto.edu/~kriz/cifar.html):
    cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta   (b"labels", b"label_names")
    cifar-100-python/train, test, meta                 (b"fine_labels", b"fine_label_names")
Each batch is a pickled dict whose b"data" is an (N, 3072) uint8 array: per image 1024 red, then
1024 green, then 1024 blue values, each plane row-major 32x32, so a reshape gives (N, 3, 32, 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from reslab.data.array_dataset import ArrayDataset
from reslab.data.download import fetch
from reslab.data.safe_pickle import load_numpy_pickle
from reslab.errors import DataError

Split = Literal["train", "test"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_PIXELS = 3 * 32 * 32  # values per image in b"data"


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and which keys its dicts use."""

    name: str  # "cifar10" | "cifar100"
    folder: str  # directory the official archive unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    labels_key: bytes
    names_key: bytes
    num_classes: int


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        labels_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
    ),
    "cifar100": CifarLayout(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        labels_key=b"fine_labels",  # the 100 fine classes; b"coarse_labels" holds the 20 groups
        names_key=b"fine_label_names",
        num_classes=100,
    ),
}


@dataclass(frozen=True)
class CifarFiles:
    batches: list[Path]  # the pickled batches of one split, in official order
    meta: Path  # the pickled dict of class names


def find_cifar_files(name: str, split: Split, data_dir: Path, *, download: bool) -> CifarFiles:
    """The files of one split, searched in `data_dir/<folder>` then `data_dir` itself.

    With `download=True` and nothing found, torchvision fetches the official archive into
    `data_dir` first (needs the internet); we still read the files with our own loader.
    """
    layout = CIFAR_LAYOUTS[name]
    wanted = layout.train_files if split == "train" else layout.test_files
    candidates = [data_dir / layout.folder, data_dir]

    def complete(directory: Path) -> bool:
        return all((directory / f).is_file() for f in (*wanted, layout.meta_file))

    found = next((d for d in candidates if complete(d)), None)
    if found is None and download:
        _download(name, data_dir)
        found = next((d for d in candidates if complete(d)), None)
    if found is None:
        missing_from = candidates[0]
        missing = [f for f in (*wanted, layout.meta_file) if not (missing_from / f).is_file()]
        raise DataError(
            f"{name} {split} files not found: expected {', '.join(missing)} in {missing_from} "
            f"(also searched {data_dir}). Rerun with --set data.download=true to fetch them, or "
            f"download the python version from {CIFAR_URL} and unpack it into {data_dir}."
        )
    return CifarFiles(batches=[found / f for f in wanted], meta=found / layout.meta_file)


def _download(name: str, data_dir: Path) -> None:
    import torchvision.datasets as tvd  # imported here: only needed when downloading

    dataset_class = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    by_hand = f"Download the python version from {CIFAR_URL} by hand and unpack it into {data_dir}."
    fetch(lambda: dataset_class(root=str(data_dir), train=True, download=True), name, data_dir, by_hand)


def _entry(batch: dict[Any, Any], key: bytes, path: Path) -> Any:
    if key not in batch:
        found = ", ".join(repr(k) for k in list(batch)[:8])
        raise DataError(f"{path}: key {key!r} missing (found {found}); the file is not a CIFAR batch")
    return batch[key]


def _load_dict(path: Path) -> dict[Any, Any]:
    content = load_numpy_pickle(path)
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return content


def read_cifar_batch(path: Path, labels_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images (N, 3, 32, 32) uint8, labels (N,) int64; checked for shape."""
    batch = _load_dict(path)
    data = _entry(batch, b"data", path)
    try:
        labels = np.asarray(_entry(batch, labels_key, path))
    except (ValueError, TypeError) as err:  # ragged or odd objects where numbers belong
        raise DataError(f"{path}: {labels_key!r} is not a list of labels ({err})") from err
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(
            f"{path}: b'data' should be an (N, {_PIXELS}) uint8 array, got {shape} "
            f"{getattr(data, 'dtype', '')}; the file is corrupt, download it again"
        )
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: {labels_key!r} should hold {len(data)} integer labels, got shape "
            f"{labels.shape}; the file is corrupt, download it again"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside [0, {num_classes}); the file is corrupt")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_class_names(path: Path, names_key: bytes, num_classes: int) -> list[str]:
    names = _entry(_load_dict(path), names_key, path)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{path}: {names_key!r} should list {num_classes} class names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(name: str, split: Split, data_dir: Path, *, download: bool = False) -> ArrayDataset:
    """CIFAR-10/100 `split` as an `ArrayDataset` of (N, 3, 32, 32) uint8 images."""
    layout = CIFAR_LAYOUTS[name]
    files = find_cifar_files(name, split, data_dir, download=download)
    parts = [read_cifar_batch(p, layout.labels_key, layout.num_classes) for p in files.batches]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    classes = read_class_names(files.meta, layout.names_key, layout.num_classes)
    return ArrayDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        classes=classes,
        name=name,
    )
