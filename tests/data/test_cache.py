"""The uint8 .npy cache: round trip, reuse through mmap, invalidation, atomic writes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from dataset_files import write_cifar, write_image_tree

import reslab.data.cache as cache_module
from reslab.data import default_cache_dir, load_cached, load_dataset


def _refuse_decoding(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise AssertionError("decoded again although a cache entry exists")


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def test_round_trip_then_reuse_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=3)
    cache_dir = tmp_path / "cache"
    first = load_cached("cifar10", "train", tmp_path / "data", cache_dir=cache_dir)
    direct = load_dataset("cifar10", "train", tmp_path / "data")
    assert torch.equal(first.images, direct.images) and torch.equal(first.labels, direct.labels)
    assert first.classes == direct.classes and first.name == "cifar10"

    entries = sorted(p.name for p in cache_dir.iterdir())
    assert len(entries) == 3 and not any(name.endswith(".tmp") for name in entries)
    assert entries[0].startswith("cifar10-train-") and entries[0].endswith(".images.npy")

    monkeypatch.setattr(cache_module, "load_dataset", _refuse_decoding)
    again = load_cached("cifar10", "train", tmp_path / "data", cache_dir=cache_dir)
    assert torch.equal(again.images, direct.images) and again.images.dtype == torch.uint8
    assert again.images.shape == (15, 3, 32, 32) and again.classes == direct.classes
    if sys.platform == "linux":
        images_file = next(cache_dir.glob("*.images.npy"))
        assert str(images_file) in _mapped_files()  # memory-mapped, not read into memory


def test_changed_source_file_gives_a_new_entry(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", per_batch=2)
    cache_dir = tmp_path / "cache"
    load_cached("cifar10", "test", tmp_path, cache_dir=cache_dir)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    stat = batch.stat()
    os.utime(batch, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "re-downloaded"
    load_cached("cifar10", "test", tmp_path, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.json"))) == 2


def test_settings_are_part_of_the_key(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "tree", size=(12, 10))
    cache_dir = tmp_path / "cache"
    small = load_cached("imagefolder", "train", tmp_path / "tree", cache_dir=cache_dir, image_size=8)
    grey = load_cached("imagefolder", "train", tmp_path / "tree", cache_dir=cache_dir, image_size=8, in_chans=1)
    assert small.images.shape == (6, 3, 8, 8) and grey.images.shape == (6, 1, 8, 8)
    assert len(list(cache_dir.glob("imagefolder-train-*.json"))) == 2


def test_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", per_batch=2)
    cache_dir = tmp_path / "cache"
    expected = load_cached("cifar10", "test", tmp_path, cache_dir=cache_dir).images.clone()
    images_file = next(cache_dir.glob("*.images.npy"))
    images_file.write_bytes(images_file.read_bytes()[:100])
    rebuilt = load_cached("cifar10", "test", tmp_path, cache_dir=cache_dir)
    assert torch.equal(rebuilt.images, expected)


def test_default_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    write_cifar(tmp_path, "cifar10", per_batch=1)
    load_cached("cifar10", "test", tmp_path)
    assert len(list((tmp_path / "env-cache").glob("*.npy"))) == 2
    monkeypatch.delenv("RESLAB_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "reslab"


def test_synthetic_is_not_cached(tmp_path: Path) -> None:
    ds = load_cached("synthetic", "train", None, cache_dir=tmp_path / "cache", synthetic_size=8)
    assert ds.synthetic and len(ds) == 8 and not (tmp_path / "cache").exists()
