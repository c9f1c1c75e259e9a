"""Builders of tiny dataset files in the exact on-disk formats, for the data tests.

Plain functions, imported by the test modules (pytest puts this directory on sys.path). Pixel
values are random but seeded, and returned, so tests compare what was written with what was read.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


class Python2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes `bytes` as Python 2 `str` opcodes (SHORT_BINSTRING / BINSTRING), as cPickle did
    for the official CIFAR files, and names numpy's pre-2.0 module like those files do."""

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]
    dispatch[bytes] = save_bytes


def dump_pickle(obj: Any, path: Path, style: str = "py3") -> None:
    """Pickle at protocol 2, like the originals.

    style="py3": what Python 3 writes (bytes rebuilt through `_codecs.encode`, numpy 2 names);
    style="py2": bytes as Python 2 `str` opcodes and `numpy.core` names, as in the official files.
    """
    with open(path, "wb") as file:
        if style == "py2":
            Python2StylePickler(file, protocol=2).dump(obj)
        else:
            pickle.dump(obj, file, protocol=2)


def write_cifar(
    root: Path, name: str = "cifar10", per_batch: int = 6, style: str = "py3", nested: bool = True
) -> dict[str, np.ndarray]:
    """CIFAR-10 (5 train batches) or CIFAR-100 files -> {"train_data", "train_labels", "test_..."}.

    `style` is passed to `dump_pickle`. nested=True puts the files in root/cifar-10-batches-py
    (or root/cifar-100-python) as the official archive does; False puts them in root itself.
    """
    rng = np.random.default_rng(0)
    cifar10 = name == "cifar10"
    folder = root / ("cifar-10-batches-py" if cifar10 else "cifar-100-python") if nested else root
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = 10 if cifar10 else 100
    written: dict[str, list[np.ndarray]] = {
        "train_data": [],
        "train_labels": [],
        "test_data": [],
        "test_labels": [],
    }
    files = [(f"data_batch_{i}", "train") for i in range(1, 6)] if cifar10 else [("train", "train")]
    files.append(("test_batch" if cifar10 else "test", "test"))
    for file_name, split in files:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, num_classes, per_batch)]
        batch: dict[bytes, Any] = {
            b"batch_label": b"batch",
            b"data": data,
            b"filenames": [b"f%d.png" % i for i in range(per_batch)],
        }
        if cifar10:
            batch[b"labels"] = labels
        else:
            batch[b"fine_labels"] = labels
            batch[b"coarse_labels"] = [label // 5 for label in labels]
        dump_pickle(batch, folder / file_name, style)
        written[f"{split}_data"].append(data)
        written[f"{split}_labels"].append(np.array(labels))
    if cifar10:
        meta = {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
        dump_pickle(meta, folder / "batches.meta", style)
    else:
        meta = {
            b"fine_label_names": [b"fine%d" % i for i in range(100)],
            b"coarse_label_names": [b"coarse%d" % i for i in range(20)],
        }
        dump_pickle(meta, folder / "meta", style)
    return {key: np.concatenate(parts) for key, parts in written.items()}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, big-endian dims, then the values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(directory: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict[str, np.ndarray]:
    """The four IDX files, gzipped or plain -> {"train_images", "train_labels", "test_..."}."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = directory / f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(path.with_name(path.name + ".gz"), "wb") as file:
                    file.write(idx_bytes(array))
            else:
                path.write_bytes(idx_bytes(array))
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


def write_image_tree(
    root: Path,
    size: tuple[int, int] = (12, 10),
    per_class: int = 3,
    classes: tuple[str, ...] = ("dog", "cat"),
) -> dict[str, list[np.ndarray]]:
    """root/{train,val}/<class>/img<i>.<ext> of `size` (w, h) -> {"train/cat": [(H, W, 3) arrays]}.

    Cats are PNG (lossless: pixels can be compared exactly), dogs JPEG.
    """
    rng = np.random.default_rng(2)
    written: dict[str, list[np.ndarray]] = {}
    for split in ("train", "val"):
        for class_name in classes:
            class_dir = root / split / class_name
            class_dir.mkdir(parents=True, exist_ok=True)
            arrays = []
            for i in range(per_class):
                array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                extension = "png" if class_name == "cat" else "jpg"
                Image.fromarray(array).save(class_dir / f"img{i}.{extension}")
                arrays.append(array)
            written[f"{split}/{class_name}"] = arrays
    return written


def write_class_tree(
    root: Path,
    counts: dict[str, dict[str, int]],
    size: tuple[int, int] = (16, 16),
    mode: str = "RGB",
    seed: int = 3,
) -> list[Path]:
    """root/<split>/<class>/<i>.png with counts[split][class] images of `size` (w, h) in Pillow
    `mode` ("RGB", "L", "I;16", "P" with a grey palette: "P-grey", with a colour one: "P") -> the
    files written. Each class has its own mean colour, so a network can learn them apart."""
    rng = np.random.default_rng(seed)
    written = []
    for split, classes in counts.items():
        for c, (class_name, n) in enumerate(sorted(classes.items())):
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = folder / f"{i:03d}.png"
                class_image(rng, c, size, mode).save(path)
                written.append(path)
    return written


def class_image(rng: np.random.Generator, c: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A noisy image whose mean depends on the class index `c`."""
    w, h = size
    base = 40 + 50 * (c % 4)
    pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    pixels[..., c % 3] = np.clip(pixels[..., c % 3].astype(int) + 60, 0, 255)
    image = Image.fromarray(pixels)
    if mode == "RGB":
        return image
    grey = image.convert("L")
    if mode == "L":
        return grey
    if mode == "I;16":
        return Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    if mode == "P-grey":
        palette_image = grey.convert("P")
        palette_image.putpalette([v for i in range(256) for v in (i, i, i)])
        return palette_image
    if mode == "P":
        return image.quantize(16)
    raise ValueError(mode)


def write_label_csv(path: Path, rows: list[tuple[str, ...]], header: bool = True) -> Path:
    """A CSV of path,label[,split] rows (a header row first when `header`)."""
    width = max(len(row) for row in rows)
    lines = [",".join(("path", "label", "split")[:width])] if header else []
    lines += [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# `reslab train` / `reslab reproduce` settings for runs of a few steps on 32 synthetic 16x16 images
# (batches of 16: two steps per epoch), shared by the report and reproduce tests.
TINY = [
    "--data",
    "synthetic",
    "--set",
    "data.synthetic_size=32",
    "--set",
    "data.image_size=16",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.progress=false",
    "--set",
    "train.threads=1",
]
