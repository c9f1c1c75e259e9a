"""Train on your own images: `reslab train` on small ImageFolder trees and CSV listings the tests build.

Parts named for what they are (a carved, stratified val when the tree has none; val/ and test/
folders as "val" and "test"), labels from a CSV, grey images as one channel, and a clear message
when the images are too small for the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dataset_files import write_class_tree, write_label_csv
from tiny_run import train_tiny_run

from reslab.cli import main
from reslab.config import load_config
from reslab.train.build import build_data
from reslab.train.distributed import Dist
from reslab.weights import read_meta


def train(tmp_path: Path, data: str, data_dir: Path, *settings: str, model: str = "resnet_cifar_8") -> Path:
    return train_tiny_run(tmp_path / "run", data_dir, *settings, data=data, model=model)


def metric_keys(run: Path) -> set[str]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {key for key in lines[-1] if key.endswith("_top1_error")}


def data_of(tmp_path: Path, data: str, data_dir: Path, *settings: str):
    overrides = [f"data.dataset={data}", f"data.data_dir={data_dir}", f"data.cache_dir={tmp_path / 'cache'}"]
    overrides += ["train.batch_size=8", "train.iterations=2", *settings]
    return build_data(load_config(None, overrides), torch.device("cpu"), Dist())


def test_a_tree_without_val_gets_a_stratified_seeded_val(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    write_class_tree(tree, {"train": {"cat": 20, "dog": 10}}, size=(12, 12))
    run = train(tmp_path, "imagefolder", tree, "data.split=auto", "data.val_fraction=0.2")
    assert metric_keys(run) == {"val_top1_error"}

    data = data_of(tmp_path, "imagefolder", tree, "data.split=auto", "data.val_fraction=0.2")
    lines = data.summary_lines()
    assert 2 <= len(lines) <= 3
    assert "train 24, val 6 (20% of train, stratified, seed 0)" in lines[0] and "2 classes" in lines[0]
    assert "3 channels" in lines[1] and "12x12" in lines[1]
    assert lines[2] == "augment: random crop (pad 4) + horizontal flip"
    val, train_part = data.source.arrays("val"), data.source.arrays("train")
    assert torch.bincount(val.labels).tolist() == [4, 2]
    # Disjoint: no training image is a val image (the images are random noise, so all differ).
    rows = {bytes(image.flatten().tolist()) for image in train_part.images}
    assert not any(bytes(image.flatten().tolist()) in rows for image in val.images)
    again = data_of(tmp_path, "imagefolder", tree, "data.split=auto", "data.val_fraction=0.2").source.arrays("val")
    other = data_of(tmp_path, "imagefolder", tree, "data.split=auto", "data.val_fraction=0.2", "train.seed=1")
    assert torch.equal(again.images, val.images)
    assert not torch.equal(other.source.arrays("val").images, val.images)
    assert "seed 1" in other.summary_lines()[0]
    capsys.readouterr()


def test_a_tree_with_val_and_test_has_three_parts(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_class_tree(
        tree, {"train": {"a": 8, "b": 8}, "val": {"a": 2, "b": 2}, "test": {"a": 3, "b": 1}}, size=(12, 12)
    )
    run = train(tmp_path, "imagefolder", tree, "data.split=auto", "data.hflip=false")
    assert metric_keys(run) == {"val_top1_error", "test_top1_error"}
    data = data_of(tmp_path, "imagefolder", tree, "data.hflip=false", "train.tta_flip=true")
    assert "train 16, val 4 (the tree's val/ folder), test 4" in data.summary_lines()[0]
    assert data.summary_lines()[2] == "augment: random crop (pad 4); no flips (data.hflip=false)"
    assert data.source.default_eval_part == "test" and data.source.watch_part == "val"


STREAMED = ("data.in_memory=false", "data.normalize=channel", "data.augment=scale", "data.workers=0")


@pytest.mark.parametrize(("split_column", "streamed"), [(True, False), (False, False), (True, True)])
def test_labels_from_a_csv(tmp_path: Path, split_column: bool, streamed: bool) -> None:
    files = write_class_tree(tmp_path / "img", {"all": {"cat": 8, "dog": 8}}, size=(12, 12))
    rows = [(str(f.relative_to(tmp_path)), f.parent.name) for f in files]
    if split_column:
        rows = [(*row, "test" if i % 8 == 7 else "val" if i % 8 == 6 else "train") for i, row in enumerate(rows)]
    csv_path = write_label_csv(tmp_path / "labels.csv", rows)
    run = train(tmp_path, "csv", csv_path, "data.split=auto", *(STREAMED if streamed else ()), "data.image_size=12")
    assert metric_keys(run) == ({"val_top1_error", "test_top1_error"} if split_column else {"val_top1_error"})
    meta = read_meta(run)
    assert meta.classes == ["cat", "dog"] and meta.in_chans == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("img/all/cat/000.png", "emu", "val"), "labels.csv:4: label 'emu' of this val row is not the label of any"),
        (("img/all/cat/099.png", "cat", "train"), "labels.csv:4: image "),
    ],
)
def test_a_bad_csv_row_is_one_line(tmp_path: Path, capsys, row, message) -> None:
    write_class_tree(tmp_path / "img", {"all": {"cat": 2, "dog": 2}}, size=(12, 12))
    good = [("img/all/cat/000.png", "cat", "train"), ("img/all/dog/000.png", "dog", "train")]
    csv_path = write_label_csv(tmp_path / "labels.csv", [*good, row])
    args = [
        "train",
        "--data",
        "csv",
        "--data-dir",
        str(csv_path),
        "--iterations",
        "1",
        "--no-progress",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    if "099" in row[0]:
        assert str(tmp_path / "img/all/cat/099.png") in err


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_grey_images_train_as_one_channel(tmp_path: Path, mode: str, channels: int) -> None:
    tree = tmp_path / "tree"
    write_class_tree(tree, {"train": {"a": 8, "b": 8}, "val": {"a": 2, "b": 2}}, size=(12, 12), mode=mode)
    run = train(tmp_path, "imagefolder", tree)
    assert read_meta(run).in_chans == channels
    forced = train(tmp_path / "forced", "imagefolder", tree, "data.in_chans=3")
    assert read_meta(forced).in_chans == 3


def test_images_too_small_for_the_network_is_one_line(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    write_class_tree(tree, {"train": {"a": 8, "b": 8}, "val": {"a": 2, "b": 2}}, size=(28, 28))
    train_tiny_run(tmp_path / "run", tree, "train.threads=0", iterations=1, model="resnet18", status=2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        "resnet18 needs at least 32x32 input; these images are 28x28: use --set data.image_size=32 "
        "or a CIFAR-stem model such as fast_resnet10"
    ) in err


def test_streamed_tree_carves_val_and_reads_grey_as_one_channel(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_class_tree(tree, {"train": {"a": 10, "b": 10}, "test": {"a": 2, "b": 2}}, size=(20, 20), mode="L")
    streamed = ["data.in_memory=false", "data.normalize=channel", "data.augment=scale", "data.image_size=16"]
    run = train(tmp_path, "imagefolder", tree, *streamed, "data.workers=0", "data.split=auto", "data.hflip=false")
    assert metric_keys(run) == {"val_top1_error", "test_top1_error"}
    assert read_meta(run).in_chans == 1
    data = data_of(tmp_path, "imagefolder", tree, *streamed, "data.split=auto", "data.hflip=false")
    assert "train 18, val 2 (10% of train, stratified, seed 0), test 4" in data.summary_lines()[0]
    assert "streamed" in data.summary_lines()[0]
    assert data.summary_lines()[2] == "augment: shorter side 18..34, random 16 crop; no flips (data.hflip=false)"


def test_mixed_sizes_train_at_the_median_shorter_side(tmp_path, capsys) -> None:
    """data.image_size=null on a tree of two sizes: one size is chosen from train's headers and said."""
    import shutil

    from dataset_files import write_image_tree

    from reslab.weights import read_meta

    write_image_tree(tmp_path / "tree", size=(60, 40), per_class=6)
    write_image_tree(tmp_path / "big", size=(90, 70), per_class=6)
    for path in (tmp_path / "big").rglob("*.*"):
        target = tmp_path / "tree" / path.relative_to(tmp_path / "big")
        shutil.copy(path, target.with_name("b" + target.name))
    # The images recipe's model, the dataset found in the folder, torch's own thread count.
    recipe = ("--recipe", "images")
    train_tiny_run(
        tmp_path / "run", tmp_path / "tree", "train.threads=0", data=None, model=None, epochs=1, extra=recipe
    )
    err = capsys.readouterr().err
    assert "70x70 pixels (the median shorter side of train, data.image_size=null)" in err
    assert read_meta(tmp_path / "run").input_size == 70
