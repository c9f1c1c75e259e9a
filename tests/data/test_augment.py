"""Modern augmentation (`reslab.data.augment`): policies, erasing, MixUp / CutMix, repeats, eval size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import write_image_tree
from PIL import Image

from reslab.config import load_config
from reslab.data import (
    ArrayDataset,
    EvalBatchSpec,
    InMemoryEvalBatches,
    InMemoryTrainBatches,
    TrainBatchSpec,
    draw_augmentation,
    normalize_crop_flip,
)
from reslab.data.augment import (
    BATCH_STREAM,
    Augmentation,
    BatchAugment,
    BatchPolicy,
    policy_transform,
    seeded,
    stream_seed,
)
from reslab.data.batches import batch_seed, repeated_order
from reslab.data.folder import ImageFiles
from reslab.data.folder_batches import FolderTrainBatches
from reslab.data.folder_transforms import imagenet_norm_stats, train_transform
from reslab.errors import ConfigError
from reslab.train.build import build_data, eval_geometry
from reslab.train.distributed import Dist
from reslab.vocab import POLICIES

NUM_CLASSES = 10


def _dataset(n: int = 64, channels: int = 3, size: int = 8, classes: int = NUM_CLASSES) -> ArrayDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    return ArrayDataset(images, torch.arange(n) % classes, [str(c) for c in range(classes)], "toy")


def _float_batch(n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct float pixels (no exact zeros, no two equal) and labels that differ from each neighbour."""
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    return x, torch.arange(n) % NUM_CLASSES


# ---- MixUp / CutMix / erasing ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_rows_are_the_convex_combination_with_the_drawn_lambda(seed: int) -> None:
    x, y = _float_batch()
    out, targets = BatchAugment(Augmentation(mixup_alpha=0.4), NUM_CLASSES)(x, y, seed)
    assert targets.shape == (8, NUM_CLASSES) and targets.dtype == torch.float32
    with seeded(stream_seed(seed, BATCH_STREAM)):  # the draw MixUp makes from this batch's stream
        lam = float(torch.distributions.Beta(torch.tensor([0.4]), torch.tensor([0.4])).sample(()))
    expected = torch.zeros(8, NUM_CLASSES)
    expected[torch.arange(8), y] += lam
    expected[torch.arange(8), y.roll(1)] += 1 - lam  # image i is mixed with image i - 1
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.roll(1, 0))


def test_cutmix_box_area_is_the_target_weight() -> None:
    x, y = _float_batch()
    mixer = BatchAugment(Augmentation(cutmix_alpha=1.0), NUM_CLASSES)
    areas = []
    for seed in range(6):
        out, targets = mixer(x, y, seed)
        pasted = (out != x).any(1)  # (B, H, W): pixels taken from the neighbour
        box = pasted[0]
        assert torch.equal(pasted, box.expand_as(pasted))  # the same box in every image
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows):  # a rectangle, filled
            assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
            assert int(box.sum()) == len(rows) * len(cols)
        area = float(box.float().mean())
        areas.append(area)
        torch.testing.assert_close(out[:, :, box], x.roll(1, 0)[:, :, box])
        torch.testing.assert_close(out[:, :, ~box], x[:, :, ~box])
        torch.testing.assert_close(targets[torch.arange(8), y], torch.full((8,), 1 - area))
        torch.testing.assert_close(targets[torch.arange(8), y.roll(1)], torch.full((8,), area))
    assert max(areas) > 0  # some box was pasted


def test_mixup_and_cutmix_together_pick_one_per_batch() -> None:
    x, y = _float_batch()
    mixer = BatchAugment(Augmentation(mixup_alpha=1.0, cutmix_alpha=1.0), NUM_CLASSES)
    kinds = set()
    for seed in range(12):
        out, targets = mixer(x, y, seed)
        changed = (out != x).any(1)[0]
        kinds.add("mixup" if changed.all() else "cutmix")
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert kinds == {"mixup", "cutmix"}


def test_random_erasing_zeroes_one_rectangle_per_image() -> None:
    x, y = _float_batch()
    out, labels = BatchAugment(Augmentation(random_erasing=1.0), NUM_CLASSES)(x, y, 5)
    assert labels is y  # no mixing: the labels stay class indices
    erased = out == 0  # x has no exact zeros: these were erased (to the normalised mean, 0)
    assert torch.equal(erased, erased[:, :1].expand_as(erased))  # all channels of the same pixels
    assert erased.flatten(1).any(1).all()  # p=1: every image
    torch.testing.assert_close(out[~erased], x[~erased])
    boxes = {tuple(e[0].nonzero().min(0).values.tolist() + e[0].nonzero().max(0).values.tolist()) for e in erased}
    assert len(boxes) > 1  # drawn per image, not one rectangle for the batch


def test_mixing_a_single_class_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mixup_alpha"):
        BatchAugment(Augmentation(cutmix_alpha=1.0), 1)
    with pytest.raises(ConfigError, match="mixup_alpha"):
        InMemoryTrainBatches(_dataset(classes=1), TrainBatchSpec(8, augmentation=Augmentation(mixup_alpha=0.2)))


# ---- policies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_policies_keep_dtype_shape_and_draw_per_image(policy: str, channels: int) -> None:
    one = torch.randint(0, 256, (channels, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    images = one.expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    augment = BatchPolicy(policy, magnitude=15)
    out = augment(images, 7)
    assert out.dtype == torch.uint8 and out.shape == images.shape  # uint8: the 0..255 range by construction
    distinct = {o.numpy().tobytes() for o in out}
    assert len(distinct) > 2  # each copy drew its own operations (a batched v2 call would give one)
    assert torch.equal(augment(images, 7), out)  # a function of the seed
    assert not torch.equal(augment(images, 8), out)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_streamed_policies_take_grey_and_colour_pil_images(policy: str, mode: str) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).convert(mode)
    transform = train_transform("rrc", 16, policy=policy)
    torch.manual_seed(0)
    out = transform(image)
    assert out.dtype == torch.uint8 and out.shape == (1 if mode == "L" else 3, 16, 16)
    assert policy_transform(policy).__class__.__name__ in repr(transform)


def test_policies_refuse_unknown_names() -> None:
    with pytest.raises(ConfigError, match="data.policy"):
        BatchPolicy("augmix")


# ---- the in-memory loader --------------------------------------------------------------------------

FULL = Augmentation(policy="trivialaugment", random_erasing=0.5, mixup_alpha=0.2, cutmix_alpha=1.0)


def test_off_path_is_bit_identical_to_normalize_crop_flip() -> None:
    ds = _dataset()
    for augmentation in (None, Augmentation()):
        batches = InMemoryTrainBatches(ds, TrainBatchSpec(16, seed=4, augmentation=augmentation))
        assert batches.policy is None and batches.per_batch is None
        order = batches.order(2)
        for b, (x, y) in enumerate(batches.epoch(2)):
            index = order[b * 16 : (b + 1) * 16]
            generator = torch.Generator().manual_seed(batch_seed(4, 2, 0, b))
            offsets, flips = draw_augmentation(16, generator, crop=True, flip=True, pad=4)
            expected = normalize_crop_flip(ds.images[index], batches.stats, offsets, flips, 4)
            assert torch.equal(x, expected) and torch.equal(y, ds.labels[index])


def test_policy_runs_on_uint8_before_the_crop_and_flip() -> None:
    ds = _dataset()
    batches = InMemoryTrainBatches(ds, TrainBatchSpec(16, seed=4, augmentation=Augmentation(policy="randaugment")))
    x, y = next(iter(batches.epoch(1)))
    index = batches.order(1)[:16]
    seed = batch_seed(4, 1, 0, 0)
    images = BatchPolicy("randaugment")(ds.images[index], seed)
    offsets, flips = draw_augmentation(16, torch.Generator().manual_seed(seed), crop=True, flip=True, pad=4)
    assert torch.equal(x, normalize_crop_flip(images, batches.stats, offsets, flips, 4))
    assert not torch.equal(x, normalize_crop_flip(ds.images[index], batches.stats, offsets, flips, 4))


def test_augmented_batches_are_deterministic_resumable_and_leave_the_global_rng_alone() -> None:
    batches = InMemoryTrainBatches(_dataset(), TrainBatchSpec(16, seed=9, augmentation=FULL))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = list(batches.epoch(3))
    assert torch.equal(torch.get_rng_state(), state)  # forked and restored
    torch.manual_seed(123)  # what ran before does not matter
    again = list(batches.epoch(3))
    resumed = list(batches.epoch(3, start_batch=2))
    assert len(first) == 4 and first[0][1].shape == (16, NUM_CLASSES)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(first[2:], resumed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = next(iter(batches.epoch(4)))
    assert not torch.equal(other[0], first[0][0])


def test_evaluation_batches_are_never_augmented() -> None:
    ds = _dataset()
    train = InMemoryTrainBatches(ds, TrainBatchSpec(16, augmentation=FULL, repeats=2))
    test = InMemoryEvalBatches(ds, EvalBatchSpec(16, stats=train.stats))
    assert test.policy is None and test.per_batch is None and test.repeats == 1
    x, y = next(iter(test.epoch(0)))
    assert torch.equal(x, train.stats.apply(ds.images[:16])) and torch.equal(y, ds.labels[:16])


# ---- repeated augmentation -------------------------------------------------------------------------


def test_repeats_spread_copies_over_ranks_and_keep_the_epoch_length() -> None:
    ds = _dataset(64)
    ranks = [InMemoryTrainBatches(ds, TrainBatchSpec(8, seed=1, rank=r, world_size=2, repeats=2)) for r in (0, 1)]
    plain = InMemoryTrainBatches(ds, TrainBatchSpec(8, seed=1, rank=0, world_size=2))
    assert len(ranks[0]) == len(plain) == 4  # batches per epoch unchanged
    orders = [b.order(5) for b in ranks]
    together = torch.cat(orders)
    assert len(together) == 64
    counts = torch.bincount(together, minlength=64)
    assert set(counts.tolist()) == {0, 2} and int((counts == 2).sum()) == 32  # half the images, twice each
    assert set(orders[0].tolist()) == set(orders[1].tolist())  # each image once on each rank
    assert torch.equal(orders[0], ranks[0].order(5))  # a pure function of (seed, epoch)
    assert not torch.equal(orders[0], ranks[0].order(6))


def test_repeats_on_one_process_and_with_the_balanced_sampler() -> None:
    ds = _dataset(60)
    batches = InMemoryTrainBatches(ds, TrainBatchSpec(10, repeats=3, sampler="balanced"))
    order = batches.order(0)
    assert len(order) == 60
    assert set(torch.bincount(order).tolist()) <= {0, 3}  # 20 images, 3 copies each
    assert torch.equal(order[::3].repeat_interleave(3), order)  # copies in a row
    assert torch.equal(repeated_order(torch.arange(7), 3), torch.tensor([0, 0, 0, 1, 1, 1, 2]))
    assert torch.equal(repeated_order(torch.arange(5), 1), torch.arange(5))


# ---- the streamed loader ---------------------------------------------------------------------------


def test_streamed_policy_mixing_and_repeats(tmp_path: Path) -> None:
    write_image_tree(tmp_path, size=(20, 18), per_class=6)  # 12 training images, 2 classes
    options = dict(augment="scale", stats=imagenet_norm_stats(), image_size=16, workers=0, seed=2)
    augmentation = Augmentation(policy="autoaugment", random_erasing=0.5, cutmix_alpha=1.0)
    batches = FolderTrainBatches(
        ImageFiles(tmp_path, "train"), TrainBatchSpec(4, augmentation=augmentation, repeats=2, **options)
    )
    epoch = list(batches.epoch(0))
    assert len(epoch) == len(batches) == 3
    x, y = epoch[0]
    assert x.shape == (4, 3, 16, 16) and y.shape == (4, 2) and y.dtype == torch.float32
    order = batches.order(0)
    assert len(order) == 12 and set(torch.bincount(order).tolist()) <= {0, 2}
    ranks = [
        FolderTrainBatches(
            ImageFiles(tmp_path, "train"), TrainBatchSpec(4, repeats=2, rank=r, world_size=2, **options)
        ).order(1)
        for r in (0, 1)
    ]
    assert set(ranks[0].tolist()) == set(ranks[1].tolist()) and len(ranks[0]) == 4  # copies on both ranks


# ---- evaluation size -------------------------------------------------------------------------------


def _config(tmp_path: Path, *settings: str):
    overrides = [
        "data.dataset=synthetic",
        "data.synthetic_size=48",
        "data.val_size=16",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.batch_size=8",
        "train.iterations=2",
        *settings,
    ]
    return load_config(None, overrides)


def test_in_memory_evaluation_at_another_size(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "data.normalize=channel", "data.eval_image_size=40", "data.policy=trivialaugment")
    data = build_data(cfg, torch.device("cpu"), Dist())
    assert data.image_hw == (32, 32) and data.image_size == 40  # weights record the evaluation size
    assert data.preprocess.resize == "shorter-center-crop"
    assert next(iter(data.train.epoch(0)))[0].shape[-2:] == (32, 32)
    assert next(iter(data.evals["val"].epoch(0)))[0].shape[-2:] == (40, 40)
    assert "TrivialAugmentWide" in data.summary_lines()[2] and "evaluated at 40x40" in data.summary_lines()[1]
    with pytest.raises(ConfigError, match="per-pixel mean"):
        build_data(_config(tmp_path, "data.eval_image_size=40"), torch.device("cpu"), Dist())


def test_eval_geometry_of_the_streamed_path(tmp_path: Path) -> None:
    ratio = 256 / 224
    assert eval_geometry(_config(tmp_path, "data.image_size=176"), 176, ratio) == (176, "shorter-201-center-crop")
    cfg = _config(tmp_path, "data.image_size=176", "data.eval_image_size=224")
    assert eval_geometry(cfg, 176, ratio) == (224, "shorter-256-center-crop")
    cfg = _config(tmp_path, "data.eval_image_size=224", "data.eval_resize_size=232")
    assert eval_geometry(cfg, 176, ratio) == (224, "shorter-232-center-crop")
    with pytest.raises(ConfigError, match="data.eval_resize_size=200"):
        eval_geometry(_config(tmp_path, "data.eval_image_size=224", "data.eval_resize_size=200"), 176, ratio)
