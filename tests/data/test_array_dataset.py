"""ArrayDataset helpers: the train/val split, the synthetic dataset, channel and size changes."""

from __future__ import annotations

import pytest
import torch

from reslab.data import (
    ArrayDataset,
    convert_channels,
    load_dataset,
    make_synthetic,
    resize_array,
    train_val_split,
)
from reslab.errors import DataError


def _numbered(n: int) -> ArrayDataset:
    """Image i is filled with i % 256 and labelled i % 10, so indices can be read back."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ArrayDataset(images, torch.arange(n) % 10, [str(c) for c in range(10)], "numbered")


def test_split_is_seeded_disjoint_and_covering() -> None:
    ds = _numbered(200)
    train, val = train_val_split(ds, 50, seed=3)
    assert len(train) == 150 and len(val) == 50
    train_ids = set(train.images[:, 0, 0, 0].tolist())
    val_ids = set(val.images[:, 0, 0, 0].tolist())
    assert not train_ids & val_ids and len(train_ids | val_ids) == 200
    assert torch.equal(train.labels, train.images[:, 0, 0, 0].long() % 10)  # labels stay with images
    again_train, again_val = train_val_split(ds, 50, seed=3)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(again_val.images, val.images) and torch.equal(again_train.labels, train.labels)
    _, other_val = train_val_split(ds, 50, seed=4)
    assert not torch.equal(other_val.images, val.images)
    assert train.images.is_contiguous() and train.classes == ds.classes


def test_split_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        train_val_split(_numbered(10), 10, seed=0)


def test_synthetic_is_seeded_and_learnable() -> None:
    train = load_dataset("synthetic", "train", None, synthetic_size=400)
    assert train.synthetic and train.name == "synthetic"
    assert train.images.shape == (400, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, make_synthetic("train", 400).images)
    test = load_dataset("synthetic", "test", None, synthetic_size=400)
    assert not torch.equal(train.images, test.images)
    # Nearest class-mean colour classifies the test set: the pattern is learnable.
    colour = train.images.float().mean((2, 3))  # (N, C)
    centres = torch.stack([colour[train.labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(test.images.float().mean((2, 3)), centres).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.9
    small = load_dataset("synthetic", "train", None, synthetic_size=4, image_size=8, in_chans=1)
    assert small.images.shape == (4, 1, 8, 8)


def test_convert_channels_and_resize() -> None:
    grey = torch.randint(0, 256, (3, 1, 6, 6), dtype=torch.uint8)
    assert torch.equal(convert_channels(grey, 3)[:, 2], grey[:, 0])
    red = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    red[:, 0] = 200
    assert convert_channels(red, 1).flatten().tolist() == [60] * 4  # 0.299 * 200, like PIL's "L"
    with pytest.raises(DataError):
        convert_channels(red, 2)
    wide = torch.arange(4 * 8, dtype=torch.uint8).view(1, 1, 4, 8)
    assert resize_array(wide, 4).shape == (1, 1, 4, 4)
    assert torch.equal(resize_array(wide, 4)[0, 0], wide[0, 0, :, 2:6])  # same height: only the crop


def test_array_dataset_checks_types() -> None:
    with pytest.raises(ValueError):
        ArrayDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), ["a"], "x")
    with pytest.raises(ValueError):
        ArrayDataset(
            torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
            torch.zeros(3, dtype=torch.int64),
            ["a"],
            "x",
        )
