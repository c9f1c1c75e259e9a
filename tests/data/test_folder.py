"""Small ImageFolder trees decoded into memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import write_image_tree
from PIL import Image

from reslab.data import load_dataset
from reslab.errors import DataError


def test_native_size_keeps_pixels_and_sorted_classes(tmp_path: Path) -> None:
    written = write_image_tree(tmp_path, size=(12, 10), per_class=3)
    ds = load_dataset("imagefolder", "train", tmp_path)
    assert ds.classes == ["cat", "dog"]  # sorted, whatever order the folders were made in
    assert ds.images.shape == (6, 3, 10, 12) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.name == f"imagefolder:{tmp_path}"
    for i, array in enumerate(written["train/cat"]):  # PNG is lossless: exact pixels, (H, W, C)
        assert np.array_equal(ds.images[i].permute(1, 2, 0).numpy(), array)
    with Image.open(tmp_path / "train" / "dog" / "img0.jpg") as image:  # JPEG: what PIL decodes
        assert np.array_equal(ds.images[3].permute(1, 2, 0).numpy(), np.asarray(image.convert("RGB")))


def test_val_split_reads_val_with_train_class_numbering(tmp_path: Path) -> None:
    write_image_tree(tmp_path, per_class=2, classes=("ant", "bee", "cow"))
    for path in (tmp_path / "val" / "ant").iterdir():
        path.unlink()
    (tmp_path / "val" / "ant").rmdir()  # a class missing from val/ must not shift the labels
    ds = load_dataset("imagefolder", "val", tmp_path)
    assert ds.classes == ["ant", "bee", "cow"]
    assert ds.labels.tolist() == [1, 1, 2, 2]


def test_resize_shorter_side_and_centre_crop(tmp_path: Path) -> None:
    write_image_tree(tmp_path, size=(24, 12), per_class=1)
    ds = load_dataset("imagefolder", "train", tmp_path, image_size=8, in_chans=1)
    assert ds.images.shape == (2, 1, 8, 8)
    # The same through PIL by hand: 24x12 -> 16x8, keep columns 4..12.
    with Image.open(tmp_path / "train" / "cat" / "img0.png") as image:
        expected = np.asarray(image.convert("L").resize((16, 8), Image.Resampling.BILINEAR))[:, 4:12]
    assert np.array_equal(ds.images[0, 0].numpy(), expected)


def test_missing_split_dir(tmp_path: Path) -> None:
    write_image_tree(tmp_path)
    for split_dir in [tmp_path / "val"]:
        for class_dir in split_dir.iterdir():
            for f in class_dir.iterdir():
                f.unlink()
            class_dir.rmdir()
        split_dir.rmdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'val'} not found"):
        load_dataset("imagefolder", "val", tmp_path)
    with pytest.raises(DataError, match=f"{tmp_path / 'test'} not found"):
        load_dataset("imagefolder", "test", tmp_path)


def test_empty_class_dir_is_named(tmp_path: Path) -> None:
    write_image_tree(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=f"{tmp_path / 'train' / 'emu'}: no images"):
        load_dataset("imagefolder", "train", tmp_path)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    write_image_tree(tmp_path)
    broken = tmp_path / "train" / "dog" / "img1.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=f"{broken}: .*replace or delete the file"):
        load_dataset("imagefolder", "train", tmp_path, image_size=8)


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    write_image_tree(tmp_path, size=(12, 10))
    Image.new("RGB", (7, 7)).save(tmp_path / "train" / "cat" / "small.png")
    with pytest.raises(DataError, match="differ in size.*image_size"):
        load_dataset("imagefolder", "train", tmp_path)
    assert load_dataset("imagefolder", "train", tmp_path, image_size=6).images.shape == (7, 3, 6, 6)


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*cifar10, cifar100, fashion-mnist"):
        load_dataset("imagenet", "train", tmp_path)
