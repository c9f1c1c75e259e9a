"""MNIST / Fashion-MNIST from tiny IDX files, gzipped and plain, and the real Debian copy."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import idx_bytes, write_idx

import reslab.data.idx as idx_module
from reslab.data import load_dataset
from reslab.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_debian_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the real Debian files, so these tests see only what they write."""
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_idx_decodes_images_and_labels(tmp_path: Path, gz: bool, layout: str) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    written = write_idx(folder, n_train=12, n_test=5, gz=gz)
    ds = load_dataset("fashion-mnist", "train", tmp_path)
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images[:, 0].numpy(), written["train_images"])
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == written["train_labels"].tolist()
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    test = load_dataset("fashion-mnist", "test", tmp_path)
    assert np.array_equal(test.images[:, 0].numpy(), written["test_images"])


def test_mnist_in_torchvision_layout(tmp_path: Path) -> None:
    written = write_idx(tmp_path / "MNIST" / "raw", n_train=3, n_test=2)
    ds = load_dataset("mnist", "test", tmp_path)
    assert ds.classes == [str(d) for d in range(10)] and ds.name == "mnist"
    assert ds.labels.tolist() == written["test_labels"].tolist()


def test_channels_and_size_for_cifar_style_networks(tmp_path: Path) -> None:
    write_idx(tmp_path, n_train=4, n_test=2)
    ds = load_dataset("fashion-mnist", "train", tmp_path, in_chans=3, image_size=32)
    assert ds.images.shape == (4, 3, 32, 32) and ds.images.is_contiguous()
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])  # grey copied to every channel


def test_missing_lists_searched_dirs_and_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "train", tmp_path)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message
    assert str(tmp_path) in message and str(tmp_path / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    write_idx(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    images = tmp_path / "train-images-idx3-ubyte"
    labels.write_bytes(images.read_bytes())  # an images file where labels belong
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: IDX magic number 2051, expected 2049"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    write_idx(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: header declares shape \(12, 28, 28\)"):
        load_dataset("fashion-mnist", "train", tmp_path)
    images.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="train-images-idx3-ubyte: 2 bytes, too short"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    write_idx(tmp_path, gz=True)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-300])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: broken gzip stream"):
        load_dataset("fashion-mnist", "test", tmp_path)
    images.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: broken gzip stream"):
        load_dataset("fashion-mnist", "test", tmp_path)


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    write_idx(tmp_path, n_test=5, gz=True)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as file:
        file.write(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="holds 5 images but .*t10k-labels-idx1-ubyte.gz holds 4 labels"):
        load_dataset("fashion-mnist", "test", tmp_path)


def test_download_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            write_idx(Path(root) / "FashionMNIST" / "raw", n_train=3, n_test=2)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    assert len(load_dataset("fashion-mnist", "train", tmp_path, download=True)) == 3


@pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", DEBIAN_DIR)
    train = load_dataset("fashion-mnist", "train", tmp_path / "empty")
    test = load_dataset("fashion-mnist", "test", tmp_path / "empty")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert len(train.classes) == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # balanced, as published
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert 60 < train.images.float().mean().item() < 80  # ~72.9 for the published data
