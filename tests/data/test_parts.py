"""A run's parts (`DataSource`): train, val and test named for what they are, and how val is made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataset_files import write_cifar, write_class_tree

from reslab.data.array_dataset import random_split_indices, stratified_split_indices, train_val_split
from reslab.data.folder import images_are_grey
from reslab.data.sources import DataSource
from reslab.data.spec import EvalBatchSpec
from reslab.errors import ConfigError

COUNTS = {"a": 20, "b": 10, "c": 3, "d": 1}  # d: a single image, which stays in train


def test_stratified_split_takes_a_share_of_each_class_disjoint_and_seeded() -> None:
    labels = torch.tensor([c for c, n in enumerate(COUNTS.values()) for _ in range(n)])[torch.randperm(34)]
    train, val = stratified_split_indices(labels, 0.1, seed=5)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(34))  # disjoint, and cover every index
    assert torch.bincount(labels[val], minlength=4).tolist() == [2, 1, 1, 0]  # round(10%), at least 1, d none
    again_train, again_val = stratified_split_indices(labels, 0.1, seed=5)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(stratified_split_indices(labels, 0.1, seed=6)[1], val)
    assert torch.bincount(labels[stratified_split_indices(labels, 0.5, seed=0)[1]], minlength=4).tolist() == [
        10,
        5,
        2,  # 1.5 rounds half up
        0,
    ]


def test_random_split_is_train_val_split() -> None:
    from reslab.data.array_dataset import ArrayDataset

    ds = ArrayDataset(
        torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), torch.zeros(50, dtype=torch.int64), ["x"], "n"
    )
    train, val = train_val_split(ds, 7, seed=3)
    train_idx, val_idx = random_split_indices(50, 7, seed=3)
    assert train.images.flatten().tolist() == train_idx.tolist() and val.images.flatten().tolist() == val_idx.tolist()


def _tree(root: Path, splits: tuple[str, ...] = ("train",)) -> Path:
    counts = {"train": {"cat": 20, "dog": 10}, "val": {"cat": 2, "dog": 2}, "test": {"cat": 3, "dog": 1}}
    write_class_tree(root, {s: counts[s] for s in splits}, size=(8, 8))
    return root


@pytest.mark.parametrize(
    ("splits", "split", "parts", "origin", "default", "watch"),
    [
        (("train",), "auto", ("val",), "stratified", "val", "val"),
        (("train",), "paper", ("val",), "random", "val", "val"),
        (("train",), "full", (), None, None, None),
        (("train", "val"), "full", ("val",), "stored", "val", "val"),
        (("train", "val", "test"), "auto", ("val", "test"), "stored", "test", "val"),
        (("train", "test"), "auto", ("val", "test"), "stratified", "test", "val"),
        (("train", "test"), "full", ("test",), None, "test", "test"),
    ],
)
def test_image_folder_parts(tmp_path, splits, split, parts, origin, default, watch) -> None:
    source = DataSource("imagefolder", str(_tree(tmp_path, splits)), split=split, val_size=5, cache_dir=str(tmp_path))
    assert (source.parts, source.val_origin, source.default_eval_part, source.watch_part) == (
        parts,
        origin,
        default,
        watch,
    )


def test_array_dataset_parts_and_the_paper_split_unchanged(tmp_path) -> None:
    write_cifar(tmp_path, "cifar10", per_batch=8)
    common = dict(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), val_size=10, seed=2)
    paper = DataSource("cifar10", split="paper", **common)
    assert paper.parts == ("val", "test") and paper.default_eval_part == "test" and paper.watch_part == "val"
    assert DataSource("cifar10", split="full", **common).parts == ("test",)
    whole = DataSource("cifar10", split="full", **common).arrays("train")
    expected_train, expected_val = train_val_split(whole, 10, seed=2)  # the paper split as it always was
    assert torch.equal(paper.arrays("val").images, expected_val.images)
    assert torch.equal(paper.arrays("train").images, expected_train.images)
    auto = DataSource("cifar10", split="auto", val_fraction=0.25, **common)
    assert auto.parts == ("val", "test") and len(auto.arrays("val")) + len(auto.arrays("train")) == 40
    with pytest.raises(ConfigError, match="no val part"):
        DataSource("cifar10", split="full", **common).arrays("val")


def test_carved_val_is_the_same_in_memory_and_streamed(tmp_path) -> None:
    root = _tree(tmp_path / "tree")
    source = DataSource("imagefolder", str(root), split="auto", val_fraction=0.2, seed=1, cache_dir=str(tmp_path))
    val = source.arrays("val")
    assert torch.bincount(val.labels).tolist() == [4, 2]
    from reslab.data.folder_transforms import imagenet_norm_stats

    spec = EvalBatchSpec(4, stats=imagenet_norm_stats(), image_size=8, workers=0)
    streamed = source.folder_eval_batches("val", spec)
    train = source.folder_eval_batches("train", spec)
    val_files = {path for path, _ in streamed.dataset.samples}
    train_files = {path for path, _ in train.dataset.samples}
    assert len(val_files) == 6 and not val_files & train_files
    assert val_files | train_files == set((root / "train").rglob("*.png"))
    assert streamed.labels.tolist() == val.labels.tolist()


@pytest.mark.parametrize(
    ("mode", "grey"), [("L", True), ("I;16", True), ("P-grey", True), ("RGB", False), ("P", False)]
)
def test_grey_is_read_from_headers_and_palettes(tmp_path, mode, grey) -> None:
    files = write_class_tree(tmp_path, {"train": {"a": 2}}, mode=mode)
    assert images_are_grey(files) is grey


def test_in_chans_auto_one_colour_file_makes_three(tmp_path) -> None:
    root = tmp_path / "tree"
    write_class_tree(root, {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}}, mode="L")
    assert DataSource("imagefolder", str(root)).input_channels == 1
    assert DataSource("imagefolder", str(root), in_chans=3).input_channels == 3
    write_class_tree(root, {"val": {"b": 1}}, mode="RGB", seed=9)  # overwrites val/b/000.png in colour
    assert DataSource("imagefolder", str(root)).input_channels == 3
    assert DataSource("cifar10").input_channels is None  # array datasets keep their own channels
