"""CIFAR-10/100 from tiny pickle batches in the official format, and the safe unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import dump_pickle, write_cifar

from reslab.data import load_dataset
from reslab.data.safe_pickle import load_numpy_pickle
from reslab.errors import DataError


@pytest.mark.parametrize("style", ["py3", "py2"])
@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_decodes_channel_major_pixels(tmp_path: Path, style: str, nested: bool) -> None:
    written = write_cifar(tmp_path, "cifar10", per_batch=4, style=style, nested=nested)
    ds = load_dataset("cifar10", "train", tmp_path)
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == written["train_labels"].tolist()
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.classes) == 10
    assert ds.name == "cifar10" and not ds.synthetic
    # Row layout: 1024 red values, 1024 green, 1024 blue, each plane row-major 32 x 32.
    data = written["train_data"]
    for image, channel, y, x in [(0, 0, 0, 0), (7, 1, 3, 30), (19, 2, 31, 31), (11, 2, 17, 5)]:
        assert ds.images[image, channel, y, x].item() == data[image, channel * 1024 + y * 32 + x]
    test = load_dataset("cifar10", "test", tmp_path)
    assert test.images.shape == (4, 3, 32, 32)
    assert np.array_equal(test.images.numpy().reshape(4, -1), written["test_data"])


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, "cifar100", per_batch=5)
    ds = load_dataset("cifar100", "train", tmp_path)
    assert ds.images.shape == (5, 3, 32, 32)
    assert ds.labels.tolist() == written["train_labels"].tolist()
    assert len(ds.classes) == 100 and ds.classes[7] == "fine7"
    assert np.array_equal(ds.images.numpy().reshape(5, -1), written["train_data"])
    assert len(load_dataset("cifar100", "test", tmp_path)) == 5


def test_cifar_channel_and_size_options(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", per_batch=2)
    grey = load_dataset("cifar10", "test", tmp_path, in_chans=1, image_size=16)
    assert grey.images.shape == (2, 1, 16, 16) and grey.images.dtype == torch.uint8


def test_missing_files_say_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "train", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "batches.meta" in message
    assert "--set data.download=true" in message and "cs.toronto.edu/~kriz/cifar.html" in message


def test_truncated_batch_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", per_batch=3)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DataError, match="data_batch_3.*corrupt or truncated"):
        load_dataset("cifar10", "train", tmp_path)


def test_wrong_shapes_name_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", per_batch=3)
    folder = tmp_path / "cifar-10-batches-py"
    dump_pickle({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, folder / "data_batch_2")
    with pytest.raises(DataError, match=r"data_batch_2: b'data' should be an \(N, 3072\) uint8"):
        load_dataset("cifar10", "train", tmp_path)
    dump_pickle({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, folder / "data_batch_2")
    with pytest.raises(DataError, match="data_batch_2: b'labels' should hold 3 integer labels"):
        load_dataset("cifar10", "train", tmp_path)
    dump_pickle({b"data": np.zeros((3, 3072), np.uint8)}, folder / "data_batch_2")
    with pytest.raises(DataError, match="data_batch_2: key b'labels' missing"):
        load_dataset("cifar10", "train", tmp_path)
    dump_pickle([1, 2, 3], folder / "data_batch_2")
    with pytest.raises(DataError, match="data_batch_2: expected a pickled dict"):
        load_dataset("cifar10", "train", tmp_path)


class RunsShellCommand:
    """What a malicious 'dataset' pickle would contain: unpickling it runs a command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (self.command,))


class CallsBuiltinExec:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("open('MARKER', 'w').close()",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, monkeypatch) -> None:
    write_cifar(tmp_path, "cifar10", per_batch=2)
    marker = tmp_path / "pwned"
    evil = {b"data": RunsShellCommand(f"touch {marker}"), b"labels": [0, 1]}
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "wb") as file:
        pickle.dump(evil, file, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_1: refusing to load (posix|os|nt)\.system"):
        load_dataset("cifar10", "train", tmp_path)
    assert not marker.exists()

    monkeypatch.chdir(tmp_path)
    with open(path, "wb") as file:
        pickle.dump({b"data": CallsBuiltinExec()}, file, protocol=4)
    with pytest.raises(DataError, match=r"refusing to load builtins\.exec"):
        load_numpy_pickle(path)
    assert not (tmp_path / "MARKER").exists()


def test_codecs_encode_allowed_only_for_latin1(tmp_path: Path) -> None:
    import codecs

    class EncodesBase64:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (codecs.encode, (b"abc", "base64"))

    path = tmp_path / "odd.pkl"
    with open(path, "wb") as file:
        pickle.dump(EncodesBase64(), file, protocol=2)
    with pytest.raises(DataError, match="odd.pkl"):
        load_numpy_pickle(path)


def test_download_uses_torchvision_then_our_reader(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, download))
            write_cifar(Path(root), "cifar10", per_batch=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10", "test", tmp_path / "new", download=True)
    assert len(ds) == 2 and calls == [(str(tmp_path / "new"), True)]

    class OfflineCIFAR10:
        def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
            raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    with pytest.raises(DataError, match="could not download cifar10.*cifar.html"):
        load_dataset("cifar10", "train", tmp_path / "other", download=True)
