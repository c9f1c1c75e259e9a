"""Small ImageFolder trees decoded whole into memory.

Layout (the torchvision / ImageNet convention):
    root/train/<class>/*.png|jpg|...
    root/val/<class>/*.png|jpg|...
Class names are the sorted directory names under `root/train` (so both splits share one label
numbering), or under the split itself when there is no `train/`. Every image is decoded once
with PIL, resized (shorter side, then centre crop) to one fixed size and stacked into an
`ArrayDataset`. This suits thousands of small images; for ImageNet-sized trees use
`reslab.data.folder_loader`, which decodes in DataLoader workers instead.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import torch

from reslab.data.array_dataset import ArrayDataset
from reslab.data.decode import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageDecodeError
from reslab.data.preprocess import load_image
from reslab.errors import DataError

Split = Literal["train", "test"]


def split_dir_name(split: Split) -> str:
    """The test split of an ImageFolder tree lives in `val/` (ImageNet's convention)."""
    return "train" if split == "train" else "val"


def _class_dirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def list_image_files(root: Path, split: Split) -> tuple[list[tuple[Path, int]], list[str]]:
    """All (image path, label) pairs of one split, sorted, and the class names.

    Raises `DataError` for a missing split directory, a tree without class folders, a class
    folder without images, or a class in `val/` that `train/` does not have.
    """
    split_dir = root / split_dir_name(split)
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} not found: an ImageFolder dataset needs {root}/train/<class>/*.jpg and "
            f"{root}/val/<class>/*.jpg; point --data-dir at the directory holding train/ and val/"
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
    samples: list[tuple[Path, int]] = []
    for label, class_name in enumerate(classes):
        class_dir = split_dir / class_name
        if not class_dir.is_dir():
            continue  # a class may be absent from val/ (a tiny validation subset)
        files = sorted(
            Path(e.path) for e in os.scandir(class_dir) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(
                f"{class_dir}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); add images "
                "or remove the empty class folder"
            )
        samples.extend((path, label) for path in files)
    return samples, classes


def load_image_folder(
    root: Path,
    split: Split,
    *,
    image_size: int | None = None,
    in_chans: int = 3,
    resize: str = "shorter-center-crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ArrayDataset:
    """Decode every image of `root/<train|val>` into an `ArrayDataset` of (N, in_chans, S, S).

    `image_size=None` keeps the files' own size, which must then be the same for all of them.
    Each file goes through `reslab.data.preprocess.load_image` (the one decoder and resize rule of
    every consumer). Decoding runs on a thread pool: PIL releases the GIL while it decodes and resizes.
    """
    if in_chans not in (1, 3):
        raise DataError(f"imagefolder images can be read with 1 (L) or 3 (RGB) channels, not {in_chans}")
    samples, classes = list_image_files(root, split)
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
            f"{root}: images differ in size ({paths[0]} is {first[1:]}, {paths[odd]} is "
            f"{arrays[odd].shape[1:]}, as (H, W)); set data.image_size to resize them all"
        )
    return ArrayDataset(
        images=torch.stack(arrays),
        labels=torch.tensor([label for _, label in samples], dtype=torch.int64),
        classes=classes,
        name=f"imagefolder:{root}",
    )
