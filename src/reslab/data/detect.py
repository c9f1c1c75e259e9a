"""Which dataset a data directory holds, for `reslab train --data-dir DIR` without a dataset named.

An own-image dataset is recognised by its shape: an ImageFolder tree (DIR/train/<class>/ with at
least one image) or a CSV file (DIR is the .csv file). Otherwise DIR must hold the files of the
dataset the settings name (CIFAR batches, MNIST IDX files), unless those settings download it
there. `dataset_in_dir` makes that choice; the caller (the command line) applies it to the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reslab.data.datasets import source_files
from reslab.data.decode import IMAGE_SUFFIXES
from reslab.errors import ConfigError, ReslabError
from reslab.vocab import DATASETS


@dataclass(frozen=True)
class Detected:
    """An own-image dataset found in a data directory, and the line that tells the user so."""

    dataset: str  # "imagefolder" or "csv"
    note: str


def detect_dataset(path: Path) -> Detected | None:
    """What `path` holds if it is one of the own-image datasets: an ImageFolder tree with
    train/<class>/ folders of images, or a .csv file; None otherwise."""
    if path.is_file() and path.suffix.lower() == ".csv":
        return Detected("csv", f"--data-dir {path} is a CSV file: training on its rows (data.dataset=csv)")
    train = path / "train"
    if not train.is_dir():
        return None
    classes = [d for d in sorted(train.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for d in classes for f in d.iterdir()):
        return None  # stops at the first image
    return Detected(
        "imagefolder",
        f"--data-dir {path} holds an ImageFolder tree ({len(classes)} class folders in train/): "
        "training on it (data.dataset=imagefolder)",
    )


def holds_dataset(dataset: str, data_dir: str) -> bool:
    """Whether `data_dir` holds the training files of `dataset` (never for synthetic, which reads
    none). Files the loader would find elsewhere (Debian's Fashion-MNIST) do not count."""
    root = Path(data_dir).expanduser().resolve()
    try:
        files = source_files(dataset, "train", data_dir)
    except ReslabError:  # its files are not there (a DataError), or the name does not fit the path
        return False
    return bool(files) and all(f.resolve().is_relative_to(root) for f in files)


def dataset_in_dir(data_dir: str, configured: str, download: bool) -> Detected | None:
    """The own-image dataset `data_dir` holds, or None to train on the `configured` dataset; a
    ConfigError when it holds neither (and `download` would not fetch the configured one into it)."""
    found = detect_dataset(Path(data_dir).expanduser())
    if found is None and not download and not holds_dataset(configured, data_dir):
        raise ConfigError(
            f"--data-dir {data_dir}: neither an ImageFolder tree ({data_dir}/train/<class>/ with "
            f"images), a CSV file, nor the {configured} files the settings train on; name the dataset "
            f"with --data ({', '.join(DATASETS)})"
        )
    return found
