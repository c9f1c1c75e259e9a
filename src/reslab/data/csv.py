"""Labels from a CSV file (data.dataset=csv, data.data_dir=the file): image paths and their classes.

    path,label[,split]          an optional header row, spelled exactly so
    cats/001.jpg,cat            relative paths are taken from the CSV's folder; absolute ones as they are
    /data/dogs/17.png,dog,val   split: train, val or test; none (two columns, or empty) is train

Class names are the sorted labels of the training rows (numerically sorted when every label is
an integer, so "2" comes before "10"); val and test rows must use those. Any problem in the file
is one `DataError` naming the file and line, the first one found: a row of the wrong shape, an
unknown split, a val/test label the training rows lack, or an image file that is not there.

A listing is the same (samples, classes) as an ImageFolder split's (`reslab.data.folder`), so CSV
images go through the same decoder, cache and streaming loader.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from reslab.errors import DataError
from reslab.vocab import PARTS

HEADER = ("path", "label", "split")


@dataclass(frozen=True)
class CsvRow:
    line: int  # 1-based line number in the file, for messages
    path: Path
    label: str
    split: str  # "train", "val" or "test"


def _label_order(labels: set[str]) -> list[str]:
    """Sorted labels; integers by value (0, 1, 2, 10), as a user numbering classes expects."""
    if labels and all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def read_rows(csv_path: Path) -> list[CsvRow]:
    """Every row of the file, checked for shape and split (not for files or labels)."""
    if not csv_path.is_file():
        raise DataError(
            f"{csv_path} not found: data.dataset=csv needs data.data_dir (--data-dir) to be a CSV file "
            "of path,label[,split] rows"
        )
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # a BOM from a spreadsheet export is not part of the path
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path} cannot be read as UTF-8 text ({exc})") from None
    folder = csv_path.parent
    rows: list[CsvRow] = []
    try:
        for line, fields in enumerate(csv.reader(text.splitlines()), start=1):
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue  # blank line
            if line == 1 and tuple(f.lower() for f in fields) in (HEADER[:2], HEADER):
                continue
            if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
                raise DataError(f"{csv_path}:{line}: expected path,label[,split], got {','.join(fields)[:200]!r}")
            split = fields[2] if len(fields) == 3 and fields[2] else "train"
            if split not in PARTS:
                raise DataError(f"{csv_path}:{line}: unknown split {split[:50]!r}; use one of {', '.join(PARTS)}")
            path = Path(fields[0]).expanduser()
            rows.append(CsvRow(line, path if path.is_absolute() else folder / path, fields[1], split))
    except csv.Error as exc:
        raise DataError(f"{csv_path}: not a readable CSV file ({exc})") from None
    return rows


@lru_cache(maxsize=4)
def _checked(csv_path: Path, stamp: tuple[int, int]) -> tuple[tuple[CsvRow, ...], tuple[str, ...]]:
    """The rows and class names of a CSV, every row checked; cached per (file, size, mtime)."""
    rows = read_rows(csv_path)
    classes = _label_order({row.label for row in rows if row.split == "train"})
    if not classes:
        raise DataError(f"{csv_path}: no training rows (rows with split train, or without a split)")
    known = set(classes)
    for row in rows:
        if row.label not in known:
            raise DataError(
                f"{csv_path}:{row.line}: label {row.label[:100]!r} of this {row.split} row is not the label "
                "of any training row; every class needs training images"
            )
        if not row.path.is_file():
            raise DataError(f"{csv_path}:{row.line}: image {row.path} not found")
    return tuple(rows), tuple(classes)


def checked_rows(csv_path: Path) -> tuple[tuple[CsvRow, ...], list[str]]:
    """All rows (each checked) and the class names, read once per version of the file."""
    try:
        stat = csv_path.stat()
    except OSError:
        read_rows(csv_path)  # raises the not-found message
        raise
    rows, classes = _checked(csv_path.resolve(), (stat.st_size, stat.st_mtime_ns))
    return rows, list(classes)


def csv_splits(csv_path: Path) -> tuple[str, ...]:
    """The splits that have rows, in PARTS order ("train" always: a CSV without one is an error)."""
    rows, _ = checked_rows(csv_path)
    present = {row.split for row in rows}
    return tuple(part for part in PARTS if part in present)


def list_csv_split(csv_path: Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image path, label) of the rows of one split, in file order, and the class names."""
    rows, classes = checked_rows(csv_path)
    index = {name: i for i, name in enumerate(classes)}
    samples = [(row.path, index[row.label]) for row in rows if row.split == split]
    if not samples:
        raise DataError(f"{csv_path}: no {split} rows (the splits with rows: {', '.join(csv_splits(csv_path))})")
    return samples, classes
