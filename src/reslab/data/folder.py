"""Image files listed on disk, decoded whole into memory: ImageFolder trees and CSV listings.

ImageFolder layout (the torchvision / ImageNet convention):
    root/train/<class>/*.png|jpg|...
    root/val/<class>/*.png|jpg|...      optional: the "val" part
    root/test/<class>/*.png|jpg|...     optional: the "test" part
Class names are the sorted directory names under `root/train` (so every split shares one label
numbering), or under the split itself when there is no `train/`. A CSV file of path,label[,split]
rows (`reslab.data.csv`) lists the same (path, label) samples; `list_samples` returns either.

`load_image_files` decodes every listed image once with PIL, resized (shorter side, then centre
crop) to one fixed size, and stacks them into an `ArrayDataset`. This suits thousands of small
images; for ImageNet-sized trees use `reslab.data.folder_batches`, which decodes in DataLoader
workers instead.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from reslab.data.array_dataset import ArrayDataset
from reslab.data.csv import csv_splits, list_csv_split
from reslab.data.decode import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageDecodeError
from reslab.data.preprocess import load_image
from reslab.errors import DataError

Split = Literal["train", "val", "test"]  # a tree's folder, a CSV's split column
FOLDER_SPLITS = ("train", "val", "test")

Sample = tuple[Path, int]  # (image file, label)

# Pillow modes of one grey channel (1-bit, 8-bit, 16-bit, 32-bit int, float; LA: grey + alpha,
# which decodes to grey on white). Palette images (P, PA) are grey when their palette is.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# Files whose headers `images_are_grey` reads per split, evenly spaced over the sorted listing:
# a small tree is read whole, an ImageNet-sized one in a few seconds instead of an hour.
GREY_SAMPLE = 256


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """Which files a streamed loader reads: one split of an ImageFolder tree or a CSV listing (as
    `list_samples` lists it), or the part of it at `subset` (a val part carved from train)."""

    root: Path  # the tree (csv: the CSV file)
    split: Split
    dataset: str = "imagefolder"  # or "csv"
    subset: torch.Tensor | None = None  # (n,) int64 indices into the split's listing; None: all of it


def split_dir_name(split: Split) -> str:
    """The folder of a split: its own name ("val" was the test split's folder before parts had names)."""
    if split not in FOLDER_SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(FOLDER_SPLITS)}")
    return split


def folder_splits(root: Path) -> tuple[str, ...]:
    """The splits a tree has: train (always: its absence is reported when listed), val/, test/."""
    return ("train", *(s for s in ("val", "test") if (root / s).is_dir()))


def _class_dirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def list_image_files(root: Path, split: Split) -> tuple[list[tuple[Path, int]], list[str]]:
    """All (image path, label) pairs of one split, sorted, and the class names.

    Raises `DataError` for a missing split directory, a tree without class folders, a class
    folder without images, or a class in `val/` or `test/` that `train/` does not have.
    """
    split_dir = root / split_dir_name(split)
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} not found: an ImageFolder dataset needs {root}/train/<class>/*.jpg (and "
            f"optionally val/ and test/ alike); point --data-dir at the directory holding train/"
        )
    train_dir = root / "train"
    classes = _class_dirs(train_dir if train_dir.is_dir() else split_dir)
    if not classes:
        raise DataError(f"{split_dir}: no class sub-directories; expected {split_dir}/<class>/*.jpg")
    unknown = sorted(set(_class_dirs(split_dir)) - set(classes))
    if unknown:
        raise DataError(
            f"{split_dir}: classes {unknown} are not in {train_dir}; both splits must use the same class folders"
        )
    # A run lists a split several times (channels, sizes, the cache's key, each part): the listing of
    # a split whose class folders have not changed since (their modification times) is remembered.
    key = (split_dir, tuple(classes), tuple(_mtime(split_dir / c) for c in classes))
    if key not in _LISTINGS:
        if len(_LISTINGS) >= MAX_LISTINGS:
            _LISTINGS.clear()
        _LISTINGS[key] = [(path, label) for label, c in enumerate(classes) for path in _class_files(split_dir / c)]
    return list(_LISTINGS[key]), classes


_LISTINGS: dict[tuple[object, ...], list[tuple[Path, int]]] = {}
MAX_LISTINGS = 16


def _mtime(folder: Path) -> int:
    try:
        return folder.stat().st_mtime_ns
    except OSError:
        return -1  # absent (a class may be missing from val/ or test/)


def _class_files(class_dir: Path) -> list[Path]:
    """A class folder's image files, sorted by name ([] when the folder is absent from this split)."""
    if not class_dir.is_dir():
        return []  # a class may be absent from val/ or test/ (a tiny evaluation subset)
    names = sorted(
        e.name for e in os.scandir(class_dir) if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise DataError(
            f"{class_dir}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); add images "
            "or remove the empty class folder"
        )
    return [class_dir / name for name in names]


def list_samples(dataset: str, root: Path, split: Split) -> tuple[list[Sample], list[str]]:
    """(image path, label) of one split of an image-file dataset, and its class names: the one
    listing that the in-memory loader, the cache and the streaming loader all read."""
    if dataset == "csv":
        return list_csv_split(root, split)
    return list_image_files(root, split)


def stored_file_splits(dataset: str, root: Path) -> tuple[str, ...]:
    """The splits an image-file dataset has on disk: a tree's folders, a CSV's split values."""
    return csv_splits(root) if dataset == "csv" else folder_splits(root)


def _header_is_grey(path: Path) -> bool | None:
    """From the header (and a palette's entries): True grey, False colour, None unreadable."""
    try:
        with Image.open(path) as image:
            if image.mode in GREY_MODES:
                return True
            if image.mode in ("P", "PA"):
                palette = image.getpalette("RGB") or []
                return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
            return False
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the decoder names the file when it is read


def images_are_grey(paths: list[Path], limit: int = GREY_SAMPLE) -> bool:
    """Whether the images of one split are grey, from the headers of at most `limit` of them,
    evenly spaced over `paths` (all of them when there are fewer): deterministic, and no pixel is
    decoded. A colour image among those not read is turned grey by the decoder (ITU-R 601 luma)."""
    if len(paths) > limit:
        paths = [paths[i * len(paths) // limit] for i in range(limit)]
    verdicts = [_header_is_grey(path) for path in paths]
    return False not in verdicts and True in verdicts


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the decoder names the file when it is read


def typical_image_size(paths: list[Path], limit: int = GREY_SAMPLE, largest: int = 128) -> int | None:
    """None when the images share one size (they train at it); else the median shorter side of at
    most `limit` of them (evenly spaced over `paths`, read from the headers), at most `largest`
    pixels: photos of mixed sizes are brought to one size a CPU can train at."""
    if len(paths) > limit:
        paths = [paths[i * len(paths) // limit] for i in range(limit)]
    sizes = [size for size in map(_header_size, paths) if size is not None]
    if not sizes or len(set(sizes)) == 1:
        return None
    shorter = sorted(min(w, h) for w, h in sizes)
    return max(1, min(largest, shorter[len(shorter) // 2]))


def load_image_files(
    samples: list[Sample],
    classes: list[str],
    name: str,
    *,
    image_size: int | None = None,
    in_chans: int = 3,
    resize: str = "shorter-center-crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    where: Path | str = "",
) -> ArrayDataset:
    """Decode listed images into an `ArrayDataset` of (N, in_chans, S, S).

    `image_size=None` keeps the files' own size, which must then be the same for all of them.
    Each file goes through `reslab.data.preprocess.load_image` (the one decoder and resize rule of
    every consumer). Decoding runs on a thread pool: PIL releases the GIL while it decodes and resizes.
    """
    if in_chans not in (1, 3):
        raise DataError(f"image files can be read with 1 (L) or 3 (RGB) channels, not {in_chans}")
    paths = [path for path, _ in samples]

    def decode(path: Path) -> torch.Tensor:
        try:
            return load_image(path, in_chans=in_chans, input_size=image_size, resize=resize, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            raise DataError(f"{exc}; replace or delete the file") from None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(decode, paths))
    first = arrays[0].shape
    odd = next((i for i, a in enumerate(arrays) if a.shape != first), None)
    if odd is not None:
        raise DataError(
            f"{where or name}: images differ in size ({paths[0]} is {first[1:]}, {paths[odd]} is "
            f"{arrays[odd].shape[1:]}, as (H, W)); set data.image_size to resize them all"
        )
    return ArrayDataset(
        images=torch.stack(arrays),
        labels=torch.tensor([label for _, label in samples], dtype=torch.int64),
        classes=classes,
        name=name,
    )
