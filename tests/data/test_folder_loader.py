"""The DataLoader path for large ImageFolder trees, on a tiny tree with workers=0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataset_files import write_image_tree
from PIL import Image

from reslab.data import (
    Lighting,
    NormStats,
    RandomShorterSideResize,
    eval_transform,
    make_folder_loader,
    set_folder_epoch,
)
from reslab.data.folder_loader import FolderSplit
from reslab.errors import ConfigError, DataError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write_image_tree(tmp_path, size=(40, 30), per_class=4)
    return tmp_path


@pytest.mark.parametrize("augment", ["scale", "rrc", "none"])
def test_train_batches_have_the_crop_size(tree: Path, augment: str) -> None:
    loader = make_folder_loader(tree, "train", batch_size=3, train=True, augment=augment, image_size=16, workers=0)
    set_folder_epoch(loader, 0)
    batches = list(loader)
    assert len(batches) == 2  # 8 images, batch 3, last partial batch dropped
    x, y = batches[0]
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_eval_modes(tree: Path) -> None:
    center = make_folder_loader(tree, "test", batch_size=8, train=False, image_size=16, workers=0)
    x, y = next(iter(center))
    assert x.shape == (8, 3, 16, 16)
    assert y.tolist() == [0] * 4 + [1] * 4  # cat, then dog: in order
    ten = make_folder_loader(tree, "test", batch_size=2, train=False, image_size=16, workers=0, eval_mode="ten-crop")
    assert next(iter(ten))[0].shape == (2, 10, 3, 16, 16)
    multi = make_folder_loader(tree, "test", batch_size=2, train=False, workers=0, eval_mode="multi-scale")
    images, labels = next(iter(multi))
    assert len(images) == 2 and labels.shape == (2,)
    # 40 x 30 images: shorter side (height) set to each paper scale, width in proportion.
    assert [tuple(t.shape) for t in images[0]] == [(3, s, int(s * 40 / 30)) for s in (224, 256, 384, 480, 640)]


def test_distributed_shards_are_disjoint(tree: Path) -> None:
    seen = []
    for rank in range(2):
        loader = make_folder_loader(
            tree,
            "train",
            batch_size=2,
            train=True,
            image_size=8,
            workers=0,
            rank=rank,
            world_size=2,
            seed=5,
        )
        set_folder_epoch(loader, 3)
        seen.append(set(iter(loader.sampler)))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8


def test_classes_follow_train_and_bad_files_raise_data_error(tree: Path) -> None:
    split = FolderSplit(tree, "test", transform=None)
    assert split.classes == ["cat", "dog"] and len(split) == 8
    broken = tree / "val" / "cat" / "img2.png"
    broken.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"{broken}: cannot decode image"):
        FolderSplit(tree, "test", transform=None)[2]


def test_random_shorter_side_resize_stays_in_range() -> None:
    torch.manual_seed(0)
    resize = RandomShorterSideResize(20, 24)
    sides = {min(resize(Image.new("RGB", (50, 40))).size) for _ in range(40)}
    assert sides <= set(range(20, 25)) and len(sides) > 2


def test_lighting_shifts_each_channel_by_a_constant() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 5, 5)
    shifted = Lighting(0.1)(image)
    delta = shifted - image
    assert torch.allclose(delta, delta[:, :1, :1].expand_as(delta), atol=1e-6)
    assert delta.abs().max() > 0
    assert torch.equal(Lighting(0.0)(image), image)


def test_eval_transform_center_crop_size() -> None:
    out = eval_transform(32)(Image.new("RGB", (80, 50), (255, 0, 0)))
    assert out.shape == (3, 32, 32)
    assert out[0].mean() > 2 and out[1].mean() < -1  # red, after ImageNet normalisation


def test_folder_normalisation_must_be_per_channel() -> None:
    pixel_mean = NormStats(torch.zeros(3, 4, 4), torch.ones(3, 1, 1))
    with pytest.raises(ConfigError, match=r"\(C, 1, 1\) statistics"):
        eval_transform(32, stats=pixel_mean)
