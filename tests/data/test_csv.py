"""Labels from a CSV file: path,label[,split] rows listed like an ImageFolder split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataset_files import write_class_tree, write_label_csv

from reslab.data import load_dataset
from reslab.data.csv import list_csv_split
from reslab.data.datasets import dataset_sha256, source_files
from reslab.data.sources import DataSource
from reslab.errors import DataError


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write_class_tree(tmp_path / "img", {"x": {"cat": 4, "dog": 4}}, size=(8, 8))
    return tmp_path / "img" / "x"


def test_rows_with_a_split_column_relative_and_absolute_paths(tmp_path: Path, images: Path) -> None:
    rows = [(f"img/x/cat/{i:03d}.png", "cat", "train") for i in range(3)]
    rows += [(str(images / "dog" / f"{i:03d}.png"), "dog", "train") for i in range(3)]  # absolute
    rows += [("img/x/cat/003.png", "cat", "val"), ("img/x/dog/003.png", "dog", "test")]
    csv_path = write_label_csv(tmp_path / "labels.csv", rows)
    samples, classes = list_csv_split(csv_path, "train")
    assert classes == ["cat", "dog"] and [label for _, label in samples] == [0, 0, 0, 1, 1, 1]
    assert samples[0][0] == tmp_path / "img/x/cat/000.png"
    assert list_csv_split(csv_path, "test")[0] == [(tmp_path / "img/x/dog/003.png", 1)]
    source = DataSource("csv", str(csv_path), split="auto")
    assert (
        source.parts == ("val", "test")
        and source.val_origin == "stored"
        and source.describe_val() == ("the CSV's val rows")
    )
    ds = load_dataset("csv", "train", csv_path)
    assert ds.images.shape == (6, 3, 8, 8) and ds.classes == ["cat", "dog"]
    # The CSV is one of the source files (its labels decide the dataset), and in the data digest.
    assert source_files("csv", "val", csv_path)[0] == csv_path
    before = dataset_sha256("csv", csv_path)
    write_label_csv(csv_path, [*rows[:-1], ("img/x/dog/003.png", "cat", "test")])
    assert dataset_sha256("csv", csv_path) != before


def test_without_a_split_column_or_header_val_is_carved(tmp_path: Path, images: Path) -> None:
    rows = [(f"img/x/{c}/{i:03d}.png", c) for c in ("cat", "dog") for i in range(4)]
    csv_path = write_label_csv(tmp_path / "labels.csv", rows, header=False)
    source = DataSource("csv", str(csv_path), split="auto", val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    assert source.parts == ("val",) and source.val_origin == "stratified"
    assert torch.bincount(source.arrays("val").labels).tolist() == [1, 1]
    assert len(source.arrays("train")) == 6


def test_integer_labels_sort_by_value(tmp_path: Path, images: Path) -> None:
    files = sorted(images.rglob("*.png"))
    csv_path = write_label_csv(tmp_path / "l.csv", [(str(f), str(label)) for f, label in zip(files, (10, 2, 1, 2))])
    assert list_csv_split(csv_path, "train")[1] == ["1", "2", "10"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [("img/x/cat/000.png", "cat"), ("img/x/dog/000.png", "dog", "val")],
            r"labels\.csv:3: label 'dog' of this val",
        ),
        ([("img/x/cat/000.png", "cat"), ("img/x/cat/009.png", "cat")], r"labels\.csv:3: image .*009\.png not found"),
        ([("img/x/cat/000.png", "cat"), ("img/x/cat/001.png", "cat", "holdout")], r"labels\.csv:3: unknown split"),
        ([("img/x/cat/000.png", "cat"), ("img/x/cat/001.png",)], r"labels\.csv:3: expected path,label"),
        ([("img/x/cat/000.png", "cat", "test")], r"no training rows"),
    ],
)
def test_a_bad_row_is_one_line_naming_it(tmp_path: Path, images: Path, rows, message) -> None:
    csv_path = write_label_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError, match=message) as caught:
        list_csv_split(csv_path, "train")
    assert "\n" not in str(caught.value)


def test_a_missing_csv_says_what_data_dir_should_be(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: data\.dataset=csv needs data\.data_dir"):
        DataSource("csv", str(tmp_path / "nope.csv")).arrays("train")
