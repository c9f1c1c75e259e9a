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

import numpy as np
import torch
from PIL import Image

from reslab.data.array_dataset import ArrayDataset
from reslab.errors import DataError

Split = Literal["train", "test"]

# The extensions torchvision's ImageFolder accepts; other files (READMEs, .DS_Store) are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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
            Path(e.path) for e in os.scandir(class_dir) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise DataError(
                f"{class_dir}: no images (looked for {', '.join(IMAGE_EXTENSIONS)}); add images "
                "or remove the empty class folder"
            )
        samples.extend((path, label) for path in files)
    return samples, classes


def shorter_side_crop_box(width: int, height: int, size: int) -> tuple[int, int, tuple[int, int, int, int]]:
    """Resize target (w, h) with shorter side `size`, and the centred size x size box in it."""
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return new_w, new_h, (left, top, left + size, top + size)


def decode_image(path: Path, mode: str, size: int | None) -> np.ndarray:
    """One file -> (C, H, W) uint8, in PIL `mode` ("RGB" | "L"), resized and centre-cropped."""
    try:
        with Image.open(path) as file:
            image = file.convert(mode)  # also forces the full decode, inside this try
        if size is not None and image.size != (size, size):
            new_w, new_h, box = shorter_side_crop_box(image.width, image.height, size)
            image = image.resize((new_w, new_h), Image.Resampling.BILINEAR).crop(box)
        array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({err}); replace or delete the file") from err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (H, W[, C]) -> (C, H, W)


def load_image_folder(root: Path, split: Split, *, image_size: int | None = None, in_chans: int = 3) -> ArrayDataset:
    """Decode every image of `root/<train|val>` into an `ArrayDataset` of (N, in_chans, S, S).

    `image_size=None` keeps the files' own size, which must then be the same for all of them.
    Decoding runs on a thread pool: PIL releases the GIL while it decodes and resizes.
    """
    if in_chans not in (1, 3):
        raise DataError(f"imagefolder images can be read with 1 (L) or 3 (RGB) channels, not {in_chans}")
    samples, classes = list_image_files(root, split)
    mode = "RGB" if in_chans == 3 else "L"
    paths = [path for path, _ in samples]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(lambda p: decode_image(p, mode, image_size), paths))
    first = arrays[0].shape
    odd = next((i for i, a in enumerate(arrays) if a.shape != first), None)
    if odd is not None:
        raise DataError(
            f"{root}: images differ in size ({paths[0]} is {first[1:]}, {paths[odd]} is "
            f"{arrays[odd].shape[1:]}, as (H, W)); set data.image_size to resize them all"
        )
    return ArrayDataset(
        images=torch.from_numpy(np.stack(arrays)),
        labels=torch.tensor([label for _, label in samples], dtype=torch.int64),
        classes=classes,
        name=f"imagefolder:{root}",
    )
