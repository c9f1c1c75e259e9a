"""In-memory training and evaluation batches: shapes, normalisation, crop/flip, determinism, shards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reslab.data import (
    ArrayDataset,
    EvalBatchSpec,
    InMemoryEvalBatches,
    InMemoryTrainBatches,
    NormStats,
    TrainBatchSpec,
    compute_norm_stats,
    draw_augmentation,
    normalize_crop_flip,
)
from reslab.errors import ConfigError


def _dataset(n: int = 100, channels: int = 3, size: int = 8, seed: int = 0) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    return ArrayDataset(images, torch.arange(n) % 10, [str(c) for c in range(10)], "toy")


def _reference_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """The obvious per-image loop: zero-pad, slice, maybe flip."""
    _, _, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    crops = []
    for image, (top, left), flip in zip(padded, offsets.tolist(), flips.tolist(), strict=True):
        crop = image[:, top : top + height, left : left + width]
        crops.append(crop.flip(-1) if flip else crop)
    return torch.stack(crops)


def test_shapes_dtypes_and_length() -> None:
    batches = InMemoryTrainBatches(_dataset(100), TrainBatchSpec(32))
    assert len(batches) == 3 and batches.num_samples == 96
    seen = list(batches.epoch(0))
    assert len(seen) == 3
    for x, y in seen:
        assert x.shape == (32, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    test = InMemoryEvalBatches(_dataset(100), EvalBatchSpec(32, stats=batches.stats))
    sizes = [len(y) for _, y in test.epoch(0)]
    assert sizes == [32, 32, 32, 4] and len(test) == 4


def test_pixel_mean_normalisation_matches_hand_reference() -> None:
    ds = _dataset(50)
    train = InMemoryTrainBatches(ds, TrainBatchSpec(16, normalize="pixel-mean"))
    expected_mean = ds.images.double().mean(0) / 255  # (C, H, W)
    torch.testing.assert_close(train.stats.mean, expected_mean.float())
    test = InMemoryEvalBatches(ds, EvalBatchSpec(16, stats=train.stats))
    x = torch.cat([x for x, _ in test.epoch(0)])  # fixed order, no augmentation
    torch.testing.assert_close(x, ds.images.float() / 255 - expected_mean.float(), rtol=0, atol=1e-6)


def test_channel_normalisation_matches_hand_reference() -> None:
    ds = _dataset(40)
    stats = compute_norm_stats(ds.images, "channel")
    pixels = ds.images.double().permute(1, 0, 2, 3).flatten(1) / 255  # (C, N*H*W)
    torch.testing.assert_close(stats.mean.flatten(), pixels.mean(1).float())
    torch.testing.assert_close(stats.std.flatten(), pixels.std(1, unbiased=False).float())
    reference = (ds.images.float() / 255 - pixels.mean(1).float().view(3, 1, 1)) / pixels.std(
        1, unbiased=False
    ).float().view(3, 1, 1)
    torch.testing.assert_close(stats.apply(ds.images), reference, rtol=1e-5, atol=1e-5)
    none = compute_norm_stats(ds.images, "none")
    torch.testing.assert_close(none.apply(ds.images), ds.images.float() / 255)


def test_stats_survive_a_dict_round_trip() -> None:
    stats = compute_norm_stats(_dataset(10).images, "pixel-mean")
    restored = NormStats.from_dict(stats.to_dict())
    assert torch.equal(restored.mean, stats.mean) and torch.equal(restored.std, stats.std)
    assert all(isinstance(v, torch.Tensor) for v in stats.to_dict().values())
    with pytest.raises(ConfigError):
        NormStats.from_dict({"mean": stats.mean})


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_crop_and_flip_equal_reference_crops_of_the_padded_image(pad: int) -> None:
    images = _dataset(64, size=8).images
    stats = compute_norm_stats(images, "pixel-mean")
    offsets, flips = draw_augmentation(64, torch.Generator().manual_seed(pad), crop=True, flip=True, pad=pad)
    assert offsets.min() >= 0 and offsets.max() <= 2 * pad and flips.any() and not flips.all()
    out = normalize_crop_flip(images, stats, offsets, flips, pad)
    reference = _reference_crop_flip(stats.apply(images), offsets, flips, pad)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_hand_picked_offsets_and_zero_border() -> None:
    images = _dataset(2, channels=1, size=4).images
    stats = NormStats.identity(1)
    offsets = torch.tensor([[0, 0], [2, 1]])  # (top, left) in the padded image
    out = normalize_crop_flip(images, stats, offsets, torch.tensor([False, True]), pad=1)
    x = images.float() / 255
    # Image 0 shifted down-right by one: the first row and column are padding (zeros).
    assert torch.equal(out[0, 0, 0], torch.zeros(4)) and torch.equal(out[0, 0, :, 0], torch.zeros(4))
    torch.testing.assert_close(out[0, 0, 1:, 1:], x[0, 0, :3, :3])
    # Image 1: rows 1.. of the image then a padding row; columns 0..3 unshifted; then mirrored.
    torch.testing.assert_close(out[1, 0, :3], x[1, 0, 1:].flip(-1))
    assert torch.equal(out[1, 0, 3], torch.zeros(4))


def test_flip_only_mirrors_about_half_the_images() -> None:
    ds = _dataset(256)
    train = InMemoryTrainBatches(ds, TrainBatchSpec(256, augment="flip", normalize="none"))
    order = train.order(0)
    x, _ = next(train.epoch(0))
    plain = ds.images[order].float() / 255
    flipped = torch.tensor([torch.allclose(a, b.flip(-1)) for a, b in zip(x, plain, strict=True)])
    kept = torch.tensor([torch.allclose(a, b) for a, b in zip(x, plain, strict=True)])
    assert torch.all(flipped | kept) and 80 < int(flipped.sum()) < 176


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    ds = _dataset(100)
    a = InMemoryTrainBatches(ds, TrainBatchSpec(10, seed=7))
    b = InMemoryTrainBatches(ds, TrainBatchSpec(10, seed=7))
    list(b.epoch(0))  # consuming other epochs first changes nothing
    expected = torch.randperm(100, generator=torch.Generator().manual_seed(7 * 1000003 + 3))
    assert torch.equal(a.order(3), expected)
    for (xa, ya), (xb, yb) in zip(a.epoch(3), b.epoch(3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.order(3), a.order(4))
    assert not torch.equal(a.order(3), InMemoryTrainBatches(ds, TrainBatchSpec(10, seed=8)).order(3))


def test_resume_from_start_batch_is_bit_exact() -> None:
    batches = InMemoryTrainBatches(_dataset(100), TrainBatchSpec(8, seed=1))
    full = list(batches.epoch(5))
    resumed = list(batches.epoch(5, start_batch=7))
    assert len(resumed) == len(full) - 7
    for (x_full, y_full), (x_res, y_res) in zip(full[7:], resumed, strict=True):
        assert torch.equal(x_full, x_res) and torch.equal(y_full, y_res)


@pytest.mark.parametrize("train", [True, False])
def test_rank_shards_are_disjoint_and_cover_the_epoch(train: bool) -> None:
    ds = _dataset(103)
    stats = compute_norm_stats(ds.images, "pixel-mean")
    world = [
        InMemoryTrainBatches(ds, TrainBatchSpec(8, stats=stats, rank=r, world_size=3, seed=2))
        if train
        else InMemoryEvalBatches(ds, EvalBatchSpec(8, stats=stats, rank=r, world_size=3))
        for r in range(3)
    ]
    orders = [w.order(1) for w in world]
    joined = torch.cat(orders)
    assert len(set(joined.tolist())) == len(joined)  # no sample on two ranks
    if train:  # drop_last: 103 // (3 * 8) = 4 whole batches on every rank
        assert all(len(w) == 4 and len(o) == 32 for w, o in zip(world, orders, strict=True))
        shared = torch.randperm(103, generator=torch.Generator().manual_seed(2 * 1000003 + 1))[:96]
        assert sorted(joined.tolist()) == sorted(shared.tolist())
    else:
        assert sorted(joined.tolist()) == list(range(103))
        assert sum(len(y) for w in world for _, y in w.epoch(0)) == 103
    labels = torch.cat([y for _, y in world[1].epoch(1)])
    assert torch.equal(labels, ds.labels[orders[1]])


def test_dtype_channels_last_and_config_errors() -> None:
    ds = _dataset(20)
    batches = InMemoryTrainBatches(ds, TrainBatchSpec(4, dtype=torch.bfloat16, channels_last=True))
    x, _ = next(batches.epoch(0))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="stats=train_batches.stats"):
        InMemoryEvalBatches(ds, EvalBatchSpec(4))
    with pytest.raises(ConfigError, match="no whole batch of 16 on each of 2"):
        InMemoryTrainBatches(ds, TrainBatchSpec(16, world_size=2))
    with pytest.raises(ConfigError, match="unknown augment"):
        InMemoryTrainBatches(ds, TrainBatchSpec(4, augment="cutout"))
    with pytest.raises(ConfigError, match="do not fit"):
        InMemoryEvalBatches(ds, EvalBatchSpec(4, stats=compute_norm_stats(_dataset(4, size=6).images, "pixel-mean")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_batches_equal_cpu_batches() -> None:
    ds = _dataset(64)
    cpu = InMemoryTrainBatches(ds, TrainBatchSpec(16, seed=3))
    gpu = InMemoryTrainBatches(ds, TrainBatchSpec(16, seed=3, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu.epoch(2), gpu.epoch(2), strict=True):
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)
        assert torch.equal(yg.cpu(), yc)
