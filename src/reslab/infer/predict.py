"""Classify image files: collect paths, decode in batches, top-k with class names.

A file that cannot be decoded becomes a `Prediction` with `error` set; the rest of the batch goes
on. Files are decoded one batch at a time, so memory stays bounded by the batch size.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reslab.data.decode import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageDecodeError
from reslab.data.preprocess import Preprocess
from reslab.infer.backends import Predictor
from reslab.weights import WeightsMeta

GLOB_CHARS = set("*?[")


@dataclass
class Prediction:
    file: str
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (class id, name, probability)
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "predictions": [{"class_id": i, "class": name, "probability": round(p, 6)} for i, name, p in self.top],
        }


def collect_images(inputs: Iterable[str]) -> list[tuple[str, str | None]]:
    """Arguments -> [(path, error)] in order: files as given, folders (recursive, image suffixes
    only, sorted), globs (recursive with **). A missing path or an empty glob is an error entry."""
    found: list[tuple[str, str | None]] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                found.append((arg, f"{arg}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            found.extend((str(p), None) for p in files)
        elif path.exists():
            found.append((arg, None))  # an explicit file is tried whatever its suffix
        elif GLOB_CHARS & set(arg):
            matches = sorted(p for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not matches:
                found.append((arg, f"{arg}: no files match this pattern"))
            found.extend((p, None) for p in matches)
        else:
            found.append((arg, f"{arg}: no such file or folder"))
    return found


def top_k(logits: torch.Tensor, names: Sequence[str], k: int) -> list[list[tuple[int, str, float]]]:
    """(B, classes) logits -> per row the k most probable (class id, name, softmax probability)."""
    probs = torch.softmax(logits.float(), dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [(int(i), names[int(i)], float(v)) for v, i in zip(vs, ids)]
        for vs, ids in zip(values.tolist(), indices.tolist())
    ]


def decode_batches(
    preprocess: Preprocess,
    files: Sequence[tuple[str, str | None]],
    *,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> Iterator[tuple[list[tuple[str, str | None]], torch.Tensor | None]]:
    """`files` ([(path, error)] as from `collect_images`) a batch at a time: ([(path, error)] with
    decoding errors filled in, the uint8 (n, C, S, S) stack of the n files without an error, in
    order; None when there are none). What `predict` and `embed` feed their networks.

    Each batch is decoded by `workers` threads (Pillow releases the GIL while decoding; default
    min(4, CPUs)).
    """

    def load(path: str) -> torch.Tensor | str:
        try:
            return preprocess.load(path, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            return str(exc)
        except MemoryError:
            return f"{path}: not enough memory to decode this image"

    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), batch_size):
            chunk = list(files[start : start + batch_size])
            todo = [i for i, (_, error) in enumerate(chunk) if error is None]
            tensors = []
            for i, loaded in zip(todo, pool.map(load, [chunk[i][0] for i in todo])):
                if isinstance(loaded, str):
                    chunk[i] = (chunk[i][0], loaded)
                else:
                    tensors.append(loaded)
            yield chunk, (torch.stack(tensors) if tensors else None)


def predict_batches(
    predictor: Predictor,
    meta: WeightsMeta,
    files: Sequence[tuple[str, str | None]],
    *,
    batch_size: int = 32,
    k: int = 5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> Iterator[tuple[list[Prediction], torch.Tensor | None]]:
    """A batch of `files` at a time, decoded by `decode_batches` and classified in one call: (its
    predictions in order, the uint8 (n, C, S, S) images of its n predictions without an error, or
    None), so that a caller may use the decoded images again (Grad-CAM: reslab.infer.explain)."""
    names = meta.class_names
    for chunk, images in decode_batches(
        predictor.preprocess, files, batch_size=batch_size, max_pixels=max_pixels, workers=workers
    ):
        results = [Prediction(path, error=error) for path, error in chunk]
        if images is not None:
            good = [r for r in results if r.error is None]
            for result, top in zip(good, top_k(predictor(images), names, k)):
                result.top = top
        yield results, images


def predict_files(
    predictor: Predictor,
    meta: WeightsMeta,
    files: Sequence[tuple[str, str | None]],
    *,
    batch_size: int = 32,
    k: int = 5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> Iterator[Prediction]:
    """Predictions in the order of `files` ([(path, error)] as from `collect_images`), a batch at a
    time (`predict_batches`)."""
    for results, _ in predict_batches(
        predictor, meta, files, batch_size=batch_size, k=k, max_pixels=max_pixels, workers=workers
    ):
        yield from results


def format_table(predictions: Sequence[Prediction]) -> str:
    """Successful predictions as an aligned text table, one row per (file, rank)."""
    rows = [
        (p.file, str(rank), name, f"{prob:.4f}")
        for p in predictions
        if p.error is None
        for rank, (_, name, prob) in enumerate(p.top, 1)
    ]
    header = ("file", "rank", "class", "probability")
    widths = [max([len(header[c])] + [len(r[c]) for r in rows]) for c in range(4)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:<{widths[2]}}  {header[3]:>{widths[3]}}"]
    last = None
    for file, rank, name, prob in rows:
        shown = file if file != last else ""
        last = file
        lines.append(f"{shown:<{widths[0]}}  {rank:>{widths[1]}}  {name:<{widths[2]}}  {prob:>{widths[3]}}")
    return "\n".join(lines)


def format_csv(predictions: Sequence[Prediction]) -> str:
    """file,rank,class_id,class,probability rows for successful predictions (errors go to stderr)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "rank", "class_id", "class", "probability"])
    for p in predictions:
        for rank, (i, name, prob) in enumerate(p.top, 1):
            writer.writerow([p.file, rank, i, name, f"{prob:.6f}"])
    return out.getvalue().rstrip("\n")


def format_json(predictions: Sequence[Prediction]) -> str:
    """A JSON array: {"file", "predictions": [{"class_id", "class", "probability"}]} or {"file", "error"}."""
    return json.dumps([p.as_dict() for p in predictions], indent=2)
