"""Decode once, then memory-map: a uint8 .npy cache of decoded datasets.

Decoding CIFAR's pickles takes a second or two and a small ImageFolder tree minutes; the cache
turns that into opening three files. For each (dataset, split, image_size, in_chans, source
files) it keeps, under `cache_dir`:

    <name>-<split>-<key>.images.npy   (N, C, H, W) uint8
    <name>-<split>-<key>.labels.npy   (N,) int64
    <name>-<split>-<key>.json         class names etc.; written last, so it marks a complete entry

`key` hashes the settings and every source file's path, size and mtime, so editing, replacing
or re-downloading a file gives a new entry instead of stale data. Each file is written to a
temporary name in the same directory, fsync'ed and `os.replace`d into place, so a crash or two
processes (DDP ranks) writing at once never leave a half-written entry behind.

Use `load_cached(...)` where you would call `load_dataset(...)`; it takes the same arguments
(but `download`) plus `cache_dir` (default $RESLAB_CACHE_DIR, else ~/.cache/reslab).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from stat import S_ISLNK

import numpy as np
import torch

from reslab.atomic import atomic_write, fsync_dir
from reslab.data.array_dataset import ArrayDataset
from reslab.data.datasets import Split, load_dataset, source_files

log = logging.getLogger(__name__)

# Bumped when the layout or the decoding changes, to invalidate old entries. 2: one decoder and
# resize rule for files and arrays (reslab.data.preprocess).
CACHE_FORMAT = 2


def default_cache_dir() -> Path:
    return Path(os.environ.get("RESLAB_CACHE_DIR", "~/.cache/reslab")).expanduser()


def cache_key(
    name: str, split: Split, files: list[Path], image_size: int | None, in_chans: int | None, resize: str
) -> str:
    """A hex digest of everything that decides the decoded tensors."""
    described = []
    folders: dict[Path, Path] = {}  # each folder resolved once: 50,000 files cost one resolve per folder
    for path in files:
        stat = os.lstat(path)
        if S_ISLNK(stat.st_mode):  # a link: its target's path, size and time, as Path.resolve and stat give
            resolved, stat = path.resolve(), path.stat()
        else:
            folder = folders.get(path.parent)
            if folder is None:
                folder = folders[path.parent] = path.parent.resolve()
            resolved = folder / path.name
        described.append([str(resolved), stat.st_size, stat.st_mtime_ns])
    settings = {
        "format": CACHE_FORMAT,
        "name": name,
        "split": split,
        "image_size": image_size,
        "in_chans": in_chans,
        "resize": resize if image_size is not None else None,
        "files": described,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def cache_stem(cache_dir: Path, name: str, split: Split, key: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name.split(":")[0])  # "imagefolder:/x" -> "imagefolder"
    return cache_dir / f"{slug}-{split}-{key}"


def save_cache(ds: ArrayDataset, stem: Path) -> None:
    """Write `ds` as the three files of one cache entry, the .json last."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    images = ds.images.contiguous().numpy()
    labels = ds.labels.contiguous().numpy()
    meta = {
        "format": CACHE_FORMAT,
        "name": ds.name,
        "classes": ds.classes,
        "synthetic": ds.synthetic,
        "images_shape": list(images.shape),
        "num_samples": len(labels),
    }
    atomic_write(stem.with_name(stem.name + ".images.npy"), lambda f: np.save(f, images), sync_dir=False)
    atomic_write(stem.with_name(stem.name + ".labels.npy"), lambda f: np.save(f, labels), sync_dir=False)
    atomic_write(stem.with_name(stem.name + ".json"), lambda f: f.write(json.dumps(meta).encode()), sync_dir=False)
    fsync_dir(stem.parent)


def open_cache(stem: Path) -> ArrayDataset | None:
    """The entry at `stem`, memory-mapped; None when absent or not readable as expected."""
    meta_path = stem.with_name(stem.name + ".json")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        # mmap_mode="c" (copy-on-write) rather than "r": the pages are still shared and read
        # lazily, but torch gets a writable array, so it neither warns nor segfaults if someone
        # writes into the tensor; such writes stay private to the process, the file never changes.
        images = np.load(stem.with_name(stem.name + ".images.npy"), mmap_mode="c")
        labels = np.load(stem.with_name(stem.name + ".labels.npy"), mmap_mode="c")
        if (
            meta.get("format") != CACHE_FORMAT
            or list(images.shape) != meta["images_shape"]
            or images.dtype != np.uint8
            or labels.shape != (meta["num_samples"],)
            or labels.dtype != np.int64
        ):
            raise ValueError("entry does not match its .json")
        return ArrayDataset(
            images=torch.from_numpy(images),
            labels=torch.from_numpy(labels),
            classes=list(meta["classes"]),
            name=meta["name"],
            synthetic=bool(meta["synthetic"]),
        )
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring unreadable cache entry %s (%s); decoding again", stem, err)
        return None


def load_cached(
    name: str,
    split: Split,
    data_dir: str | Path | None,
    *,
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    synthetic_size: int = 512,
    resize: str = "shorter-center-crop",
) -> ArrayDataset:
    """`load_dataset` with a memory-mapped uint8 cache in front (see the module docstring).

    The "synthetic" dataset is generated directly: it reads no files and is quick to make. It reads
    what is on disk: fetch missing files first (`source_files(..., download=True)`, as
    `reslab.data.sources.DataSource.arrays` does under data.download).
    """
    if name == "synthetic":
        return load_dataset(
            name,
            split,
            data_dir,
            image_size=image_size,
            in_chans=in_chans,
            synthetic_size=synthetic_size,
        )
    files = source_files(name, split, data_dir)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stem = cache_stem(cache_root, name, split, cache_key(name, split, files, image_size, in_chans, resize))
    cached = open_cache(stem)
    if cached is not None:
        log.info("%s %s: memory-mapped from cache %s", name, split, stem)
        return cached
    ds = load_dataset(name, split, data_dir, image_size=image_size, in_chans=in_chans, resize=resize)
    try:
        save_cache(ds, stem)
    except OSError as err:  # a read-only or full disk costs speed next time, never this run
        log.warning("could not write cache %s (%s); continuing without it", stem, err)
        return ds
    reopened = open_cache(stem)
    return reopened if reopened is not None else ds
