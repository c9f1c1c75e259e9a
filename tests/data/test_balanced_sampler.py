"""data.sampler=balanced: each epoch a class-balanced order, a pure function of (seed, epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataset_files import write_class_tree

from reslab.data.array_dataset import ArrayDataset
from reslab.data.batches import InMemoryEvalBatches, InMemoryTrainBatches, balanced_order
from reslab.data.folder import ImageFiles
from reslab.data.folder_batches import FolderTrainBatches
from reslab.data.folder_transforms import imagenet_norm_stats
from reslab.data.spec import EvalBatchSpec, TrainBatchSpec
from reslab.errors import ConfigError


def imbalanced(rare: int = 10, common: int = 200) -> ArrayDataset:
    """1:20: class 0 has `rare` images, class 1 `common`, interleaved in index order."""
    labels = torch.cat([torch.zeros(rare), torch.ones(common)]).long()[torch.randperm(rare + common)]
    images = torch.randint(0, 256, (len(labels), 3, 4, 4), dtype=torch.uint8)
    return ArrayDataset(images, labels, ["rare", "common"], "imbalanced")


def test_an_epoch_draws_each_class_about_equally_often() -> None:
    ds = imbalanced()
    batches = InMemoryTrainBatches(ds, TrainBatchSpec(8, sampler="balanced", seed=3))
    random = InMemoryTrainBatches(ds, TrainBatchSpec(8, seed=3))
    assert len(batches) == len(random) == 26  # the random order's length: 210 // 8 batches
    labels = torch.cat([y for _, y in batches.epoch(0)])
    counts = torch.bincount(labels, minlength=2).tolist()
    assert sum(counts) == 208 and abs(counts[0] - counts[1]) <= 4
    order = batches.order(0)
    assert set(order[ds.labels[order] == 0].tolist()) == set((ds.labels == 0).nonzero().flatten().tolist())
    common_seen = order[ds.labels[order] == 1]
    assert len(set(common_seen.tolist())) == len(common_seen)  # the common class: no repeats in an epoch


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    ds = imbalanced()
    one = InMemoryTrainBatches(ds, TrainBatchSpec(8, sampler="balanced", seed=3))
    list(one.epoch(0))  # iterating changes nothing
    other = InMemoryTrainBatches(ds, TrainBatchSpec(8, sampler="balanced", seed=3))
    assert torch.equal(one.order(5), other.order(5)) and torch.equal(one.order(0), other.order(0))
    assert not torch.equal(one.order(0), one.order(1))
    assert not torch.equal(
        one.order(0), InMemoryTrainBatches(ds, TrainBatchSpec(8, sampler="balanced", seed=4)).order(0)
    )
    assert torch.equal(balanced_order(ds.labels, 2, 3, 7), balanced_order(ds.labels, 2, 3, 7))


def test_ranks_take_disjoint_shares_of_one_order() -> None:
    ds = imbalanced()
    ranks = [
        InMemoryTrainBatches(ds, TrainBatchSpec(4, sampler="balanced", seed=1, rank=r, world_size=2)) for r in (0, 1)
    ]
    shared = balanced_order(ds.labels, 2, 1, 2)[: len(ranks[0]) * 4 * 2]
    shares = [batches.order(2) for batches in ranks]
    assert torch.equal(shares[0], shared[0::2]) and torch.equal(shares[1], shared[1::2])
    positions = [set(range(r, len(shared), 2)) for r in (0, 1)]
    assert not positions[0] & positions[1] and positions[0] | positions[1] == set(range(len(shared)))
    assert sorted(torch.cat(shares).tolist()) == sorted(shared.tolist())


def test_absent_classes_get_no_draws_and_evaluation_ignores_the_sampler() -> None:
    ds = imbalanced()
    ds.classes = ["rare", "common", "never"]
    order = balanced_order(ds.labels, 3, 0, 0)
    assert len(order) == len(ds) and torch.bincount(ds.labels[order], minlength=3)[2] == 0
    stats = InMemoryTrainBatches(ds, TrainBatchSpec(8)).stats
    assert torch.equal(InMemoryEvalBatches(ds, EvalBatchSpec(8, stats=stats)).order(0), torch.arange(210))
    with pytest.raises(ConfigError, match="unknown sampler"):
        InMemoryTrainBatches(ds, TrainBatchSpec(8, sampler="weighted"))


def test_streamed_batches_balance_too(tmp_path: Path) -> None:
    write_class_tree(tmp_path, {"train": {"a": 2, "b": 14}}, size=(8, 8))
    ranks = [
        FolderTrainBatches(
            ImageFiles(tmp_path, "train"),
            TrainBatchSpec(
                2,
                augment="scale",
                stats=imagenet_norm_stats(),
                image_size=8,
                workers=0,
                sampler="balanced",
                seed=2,
                rank=r,
                world_size=2,
            ),
        )  # fmt: skip
        for r in (0, 1)
    ]
    assert len(ranks[0]) == 4
    orders = [b.order(1) for b in ranks]
    labels = ranks[0].labels[torch.cat(orders)]
    assert torch.bincount(labels).tolist() == [8, 8]
    assert torch.equal(orders[0], ranks[0].order(1))
    x, y = next(ranks[0].epoch(1))
    assert x.shape == (2, 3, 8, 8) and torch.equal(y, ranks[0].labels[orders[0][:2]])
