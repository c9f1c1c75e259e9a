"""The DataLoader path for large ImageFolder trees (`FolderTrainBatches`, `FolderEvalBatches`), on a tiny tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataset_files import write_image_tree
from PIL import Image

from reslab.data.folder import ImageFiles
from reslab.data.folder_batches import FolderEvalBatches, FolderSplit, FolderTrainBatches
from reslab.data.folder_transforms import Lighting, RandomShorterSideResize, eval_transform, imagenet_norm_stats
from reslab.data.norm import NormStats
from reslab.data.spec import EvalBatchSpec, TrainBatchSpec
from reslab.errors import ConfigError, DataError

STATS = imagenet_norm_stats()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write_image_tree(tmp_path, size=(40, 30), per_class=4)
    return tmp_path


@pytest.mark.parametrize("augment", ["scale", "rrc", "none"])
def test_train_batches_have_the_crop_size(tree: Path, augment: str) -> None:
    batches = FolderTrainBatches(
        ImageFiles(tree, "train"), TrainBatchSpec(3, stats=STATS, augment=augment, image_size=16, workers=0)
    )
    epoch = list(batches.epoch(0))
    assert len(epoch) == len(batches) == 2  # 8 images, batch 3, last partial batch dropped
    x, y = epoch[0]
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_eval_modes(tree: Path) -> None:
    center = FolderEvalBatches(
        ImageFiles(tree, "val"),
        EvalBatchSpec(8, stats=STATS, image_size=16, workers=0, resize="shorter-18-center-crop"),
    )
    x, y = next(center.epoch(0))
    assert x.shape == (8, 3, 16, 16)
    assert y.tolist() == [0] * 4 + [1] * 4  # cat, then dog: in order
    ten = FolderEvalBatches(
        ImageFiles(tree, "val"),
        EvalBatchSpec(2, stats=STATS, image_size=16, workers=0, resize="shorter-18-center-crop", eval_mode="ten-crop"),
    )
    assert next(ten.epoch(0))[0].shape == (2, 10, 3, 16, 16)
    multi = FolderEvalBatches(
        ImageFiles(tree, "val"), EvalBatchSpec(2, stats=STATS, workers=0, eval_mode="multi-scale")
    )
    images, labels = next(multi.epoch(0))
    assert len(images) == 2 and labels.shape == (2,)
    # 40 x 30 images: shorter side (height) set to each paper scale, width in proportion.
    assert [tuple(t.shape) for t in images[0]] == [(1, 3, s, int(s * 40 / 30)) for s in (224, 256, 384, 480, 640)]


def test_eval_batches_are_the_normalised_uint8_pixels(tree: Path) -> None:
    """Workers hand over uint8; the main process normalises with NormStats.apply, like every consumer."""
    stats = NormStats(torch.rand(3, 1, 1), torch.rand(3, 1, 1) + 0.5)
    raw = FolderEvalBatches(
        ImageFiles(tree, "val"),
        EvalBatchSpec(8, stats=NormStats.identity(3), image_size=16, workers=0, resize="shorter-center-crop"),
    )
    x0, _ = next(raw.epoch(0))
    pixels = (x0 * 255).round().to(torch.uint8)
    normalised = FolderEvalBatches(
        ImageFiles(tree, "val"), EvalBatchSpec(8, stats=stats, image_size=16, workers=0, resize="shorter-center-crop")
    )
    x, _ = next(normalised.epoch(0))
    assert torch.equal(x, stats.apply(pixels))


def test_distributed_shards_are_disjoint(tree: Path) -> None:
    seen = []
    for rank in range(2):
        batches = FolderTrainBatches(
            ImageFiles(tree, "train"),
            TrainBatchSpec(2, augment="scale", stats=STATS, image_size=8, workers=0, rank=rank, world_size=2, seed=5),
        )
        seen.append(set(batches.order(3).tolist()))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8


def test_classes_follow_train_and_a_bad_file_is_one_line(tree: Path) -> None:
    split = FolderSplit(tree, "val", transform=None)
    assert split.classes == ["cat", "dog"] and len(split) == 8
    broken = tree / "val" / "cat" / "img2.png"
    broken.write_bytes(b"garbage")
    image, _ = FolderSplit(tree, "val", transform=None)[2]
    assert isinstance(image, str) and str(broken) in image
    for workers in (0, 2):
        batches = FolderEvalBatches(
            ImageFiles(tree, "val"), EvalBatchSpec(4, stats=STATS, image_size=16, workers=workers)
        )
        with pytest.raises(DataError) as caught:
            list(batches.epoch(0))
        message = str(caught.value)
        assert str(broken) in message and "\n" not in message and "Traceback" not in message


def test_random_shorter_side_resize_stays_in_range() -> None:
    torch.manual_seed(0)
    resize = RandomShorterSideResize(20, 24)
    sides = {min(resize(Image.new("RGB", (50, 40))).size) for _ in range(40)}
    assert sides <= set(range(20, 25)) and len(sides) > 2


def test_lighting_shifts_each_channel_of_each_image_by_a_constant() -> None:
    x = torch.rand(2, 3, 5, 5)
    std = torch.full((3, 1, 1), 0.5)
    shifted = Lighting(0.1)(x, std, torch.Generator().manual_seed(0))
    delta = shifted - x
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-6)
    assert delta.abs().max() > 0 and not torch.allclose(delta[0], delta[1])
    assert torch.equal(Lighting(0.0)(x, std, torch.Generator()), x)


def test_eval_transform_center_crop_size() -> None:
    out = eval_transform(32, "shorter-36-center-crop")(Image.new("RGB", (80, 50), (255, 0, 0)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert out[0].min() == 255 and out[1].max() == 0


def test_multi_scale_needs_per_channel_normalisation(tree: Path) -> None:
    pixel_mean = NormStats(torch.zeros(3, 4, 4), torch.ones(3, 1, 1))
    with pytest.raises(ConfigError, match="per-channel"):
        FolderEvalBatches(ImageFiles(tree, "val"), EvalBatchSpec(2, stats=pixel_mean, eval_mode="multi-scale"))


@pytest.mark.parametrize("augment", ["scale", "rrc"])
def test_hflip_false_takes_the_flip_out_of_the_streamed_augmentation(augment: str) -> None:
    import torchvision.transforms as T

    from reslab.data.folder_transforms import train_transform

    def flips(transform) -> bool:
        return any(isinstance(t, T.RandomHorizontalFlip) for t in transform.transforms)

    assert flips(train_transform(augment, 16)) and not flips(train_transform(augment, 16, hflip=False))


def test_grey_imagenet_statistics_are_one_channel() -> None:
    grey = imagenet_norm_stats(1)
    assert grey.mean.shape == (1, 1, 1) and abs(grey.mean.item() - 0.449) < 1e-3 and abs(grey.std.item() - 0.226) < 1e-3
