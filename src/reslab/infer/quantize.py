"""Static int8 quantisation of an exported ONNX file, for onnxruntime on CPU (`reslab export --int8`).

What is written: a QDQ model (QuantizeLinear / DequantizeLinear around each quantised op, which
onnxruntime fuses into integer kernels) from `onnxruntime.quantization.quantize_static`, after its
`quant_pre_process` (shape inference and graph clean-up):
  - weights int8, per output channel (symmetric); activations uint8 (asymmetric, zero point
    chosen per tensor), the pairing onnxruntime's x86 kernels are fast for. On the AVX2-only EPYC
    this was written on, ResNet-50 at batch 16 (measured under load): u8/s8 ran ~1.5x faster than
    the fp32 file; u8/u8 and s8/s8 ran no faster than fp32 (no fast kernels for them without VNNI).
  - the stem convolution, the one fed by the network input, stays float32. x86 CPUs without VNNI
    (AVX2; AVX-512 without VNNI) multiply u8 x s8 with VPMADDUBSW, which adds pairs of products
    in int16 and saturates: with full-range weights that happens where activations are large and
    dense, which is the normalised image itself. Measured on the shipped wrn_10_2-fashion-mnist:
    quantising every conv, top-1 agreement with fp32 on the 10k test images was 93.4% and test
    accuracy fell 90.9% -> 87.4%; quantising only the stem gave 93.6% agreement, any other single
    conv >= 99.35%. With the stem in float32: 99.5-99.6% agreement, accuracy within 0.1 points.
    (7-bit weights everywhere, onnxruntime's `reduce_range` advice for such CPUs, gave 98.1%.)
    The stem is 3% of ResNet-50's multiply-adds; keeping it float cost no measurable speed.
  - BatchNormalization nodes (pre-activation nets keep some, see fold_batchnorm) stay float32:
    onnxruntime has no integer kernel for them and per-tensor int8 scales would only add error.
  - calibration: percentile (99.999th percentile of |x| per tensor, from a 2048-bin histogram),
    chosen by measurement on wrn_10_2-fashion-mnist, 512 training images, 3 samples, all 10k test
    images: mean |logit diff| from fp32 0.026-0.027 against 0.031-0.036 for min/max, top-1
    agreement 99.49-99.61% against 99.44-99.56%; accuracy 90.93-90.97% against 90.98-91.07%
    (fp32 90.92%): int8 follows fp32 more closely, at the same accuracy. Entropy calibration, as
    `quantize_static` sets it up (128 histogram bins searched for 128 quantised bins), has one
    candidate threshold and equals min/max. Percentile cost ~30% more calibration time than
    min/max on ResNet-50 (most of it is the forward passes). Calibration runs one batch at a time
    ("CalibStridedMinMax"), so memory holds one batch of activations, not all of them.

The calibration images are a random sample of the training split of a dataset (or of a folder
of images); the check afterwards runs the float32 and int8 files, through the same
`OnnxPredictor` that `reslab predict` uses, on *other* images: the dataset's test split, or a
disjoint part of the folder. It reports top-1 agreement, max |logit diff| relative to the logit
scale and, with labels, both accuracies; agreement below `min_agreement` is an `ExportError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from reslab.atomic import atomic_write_bytes, staged
from reslab.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError
from reslab.data.norm import NormStats
from reslab.data.preprocess import Preprocess
from reslab.infer.backends import OnnxPredictor
from reslab.infer.export import ExportError
from reslab.weights import WeightsMeta

if TYPE_CHECKING:  # onnxruntime is imported by the functions that use it
    from onnxruntime.quantization import CalibrationDataReader

CALIBRATION_IMAGES = 512  # images whose activations set the int8 ranges
VERIFY_IMAGES = 1000  # held-out images on which int8 is compared with fp32
# Top-1 agreement below this fails the export. A sound int8 model of wrn_10_2-fashion-mnist agrees
# with fp32 on 99.4-99.6% of the 10k test images, yet on one sample of 1000 of them on 98.9%
# (sampling: 11 flips where 5 were expected); models with many classes have more near-ties to
# flip. A broken quantisation measured 93.4% (u8 x s8 saturation in the stem) and an accuracy
# collapse would be far lower, so 97% rejects those without rejecting sound models by chance.
MIN_AGREEMENT = 0.97
CALIBRATION_BATCH = 16  # images per calibration run (memory: one batch of activations)
PERCENTILE = 99.999  # of |activation|, per tensor
SEED = 0  # which images are sampled for calibration and for the check


@dataclass
class CalibrationSet:
    images: torch.Tensor  # uint8 (N, C, S, S), preprocessed as `reslab predict` does
    holdout: torch.Tensor  # uint8 (M, C, S, S), disjoint from `images`
    holdout_labels: torch.Tensor | None  # (M,) int64 when the source has labels
    source: str  # e.g. "512 fashion-mnist training images"
    holdout_source: str  # e.g. "1000 fashion-mnist test images"
    seed: int = SEED  # of the random sample


@dataclass
class Int8Result:
    path: Path
    sidecar: Path
    calibration: str
    holdout: str
    agreement: float  # top-1 agreement with the fp32 file on the held-out images
    max_abs_diff: float  # max |logit diff| int8 vs fp32 on them
    logit_scale: float  # max |fp32 logit| on them
    accuracy_fp32: float | None = None  # with labels only
    accuracy_int8: float | None = None
    seconds: float = 0.0  # quantisation (calibration passes included) + check


# ---- calibration images --------------------------------------------------------------------------


def dataset_from_meta(meta: WeightsMeta) -> tuple[str, str | None]:
    """(dataset name, data dir or None) recorded in the weights, e.g. "fashion-mnist (Debian ...)"."""
    from reslab.vocab import DATASETS

    text = meta.dataset.strip()
    if text.startswith("imagefolder:"):
        return "imagefolder", meta.data_dir or text.split(":", 1)[1]
    first = meta.dataset_name
    return (first, meta.data_dir or None) if first in DATASETS else ("", None)


def _decode_files(paths: list[str], preprocess: Preprocess, max_pixels: int) -> tuple[list[torch.Tensor], list[int]]:
    """Files -> (uint8 tensors, indices of the files decoded), as `reslab predict` preprocesses them."""

    def load(path: str) -> torch.Tensor | None:
        try:
            return preprocess.load(path, max_pixels=max_pixels)
        except ImageDecodeError:
            return None

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        loaded = list(pool.map(load, paths))
    kept = [i for i, x in enumerate(loaded) if x is not None]
    return [loaded[i] for i in kept], kept


def _sample(n_total: int, n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def dataset_calibration(
    name: str,
    data_dir: str | Path | None,
    preprocess: Preprocess,
    n: int,
    verify: int,
    seed: int = SEED,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CalibrationSet:
    """n random training images for calibration, `verify` random held-out images (with labels) to
    check: the test split, or an image-file dataset's own held-out part (test/, else val/; a tree with
    train/ only: a disjoint fifth of it)."""
    from reslab.data import load_cached
    from reslab.data.datasets import resolve_data_dir, stored_splits
    from reslab.data.folder import list_samples

    if name in ("imagefolder", "csv"):  # decode only the sampled files, the way predict does
        root = resolve_data_dir(data_dir)
        splits = stored_splits(name, root)
        train_samples = list_samples(name, root, "train")[0]
        held_split = "test" if "test" in splits else "val" if "val" in splits else None
        if held_split is not None:
            held_samples = list_samples(name, root, held_split)[0]
        else:
            order = [train_samples[i] for i in _sample(len(train_samples), len(train_samples), seed).tolist()]
            cut = min(verify, max(1, len(order) // 5))
            held_samples, train_samples = order[:cut], order[cut:]
        parts = []
        for what, samples, count in (("train", train_samples, n), (held_split or "train", held_samples, verify)):
            chosen = [samples[i] for i in _sample(len(samples), count, seed).tolist()]
            tensors, kept = _decode_files([str(p) for p, _ in chosen], preprocess, max_pixels)
            if not tensors:
                raise ExportError(f"no readable images among the {len(chosen)} sampled from {root} ({what})")
            parts.append((torch.stack(tensors), torch.tensor([chosen[i][1] for i in kept])))
        (calib, _), (held, labels) = parts
        where = f"{name} {root}"
        held_what = f"{held_split or 'other training'} images"
        return CalibrationSet(
            calib, held, labels, f"{len(calib)} {where} training images", f"{len(held)} {where} {held_what}", seed
        )
    train = load_cached(name, "train", data_dir)
    test = load_cached(name, "test", data_dir)
    calib = preprocess.fit_array(train.images[_sample(len(train), n, seed)])
    index = _sample(len(test), verify, seed)
    held, labels = preprocess.fit_array(test.images[index]), test.labels[index]
    where = name
    return CalibrationSet(
        calib, held, labels, f"{len(calib)} {where} training images", f"{len(held)} {where} test images", seed
    )


def folder_calibration(
    spec: str, preprocess: Preprocess, n: int, verify: int, seed: int = SEED, max_pixels: int = DEFAULT_MAX_PIXELS
) -> CalibrationSet:
    """Images of a folder (recursive) or glob: a random fifth (at most `verify`) held out to check."""
    from reslab.infer.predict import collect_images

    files = [path for path, error in collect_images([spec]) if error is None]
    if len(files) < 2:
        raise ExportError(
            f"--calibration {spec}: need at least 2 image files (some to calibrate on, others "
            f"to check the result), found {len(files)}"
        )
    order = [files[i] for i in _sample(len(files), len(files), seed).tolist()]
    n_held = min(verify, max(1, len(order) // 5))
    held_files, calib_files = order[:n_held], order[n_held : n_held + n]
    calib, _ = _decode_files(calib_files, preprocess, max_pixels)
    held, _ = _decode_files(held_files, preprocess, max_pixels)
    if not calib or not held:
        raise ExportError(
            f"--calibration {spec}: too few of the files decode as images "
            f"({len(calib)} for calibration, {len(held)} to check)"
        )
    skipped = len(calib_files) + len(held_files) - len(calib) - len(held)
    note = f", {skipped} unreadable file(s) skipped" if skipped else ""
    return CalibrationSet(
        torch.stack(calib),
        torch.stack(held),
        None,
        f"{len(calib)} images from {spec}{note}",
        f"{len(held)} other images from {spec}",
        seed,
    )


def calibration_set(
    spec: str | None,
    meta: WeightsMeta,
    preprocess: Preprocess,
    *,
    data_dir: str | Path | None = None,
    images: int = CALIBRATION_IMAGES,
    verify: int = VERIFY_IMAGES,
    seed: int = SEED,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CalibrationSet:
    """`spec`: a dataset name reslab knows, a folder or glob of images, or None for the dataset the
    weights were trained on. A dataset name wins over a folder of that name (write ./cifar10)."""
    from reslab.errors import ReslabError
    from reslab.vocab import DATASETS

    if images < 1 or verify < 1:
        raise ExportError("--calibration-images and --verify-images must be >= 1")
    if spec is not None and spec not in DATASETS:
        return folder_calibration(spec, preprocess, images, verify, seed, max_pixels)
    name, recorded_dir = (spec, None) if spec is not None else dataset_from_meta(meta)
    hint = (
        "pass --calibration with a dataset name (cifar10, fashion-mnist, ... with --data-dir) or a folder "
        "or glob of images like those the model will classify"
    )
    if not name:
        raise ExportError(
            f"no calibration data: the weights do not name a dataset reslab can load "
            f"({meta.dataset or 'none recorded'!r}); {hint}"
        )
    try:
        return dataset_calibration(
            name, data_dir if data_dir is not None else recorded_dir, preprocess, images, verify, seed, max_pixels
        )
    except ExportError:
        raise
    except ReslabError as exc:
        # The first line says where it looked; a "Rerun with --set data.download=true" tail is train's.
        first = str(exc).strip().splitlines()[0].split(" Rerun with --set")[0]
        raise ExportError(f"no calibration data: {name} does not load here ({first}); {hint}") from None


# ---- quantisation --------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization prints progress and logs warnings on the root logger; hide both."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _stem_convs(model) -> list[str]:
    """Names of the Conv nodes that read the graph input directly."""
    inputs = {i.name for i in model.graph.input}
    return [node.name for node in model.graph.node if node.op_type == "Conv" and node.input[0] in inputs]


def calibration_batches(images: torch.Tensor, stats: NormStats) -> list[np.ndarray]:
    """uint8 (N, C, S, S) -> the normalised float32 batches the calibration feeds the graph
    (`NormStats.apply`, as every predictor normalises)."""
    stats = stats.to("cpu")
    return [stats.apply(images[i : i + CALIBRATION_BATCH]).numpy() for i in range(0, len(images), CALIBRATION_BATCH)]


def calibration_reader(batches: list[np.ndarray]) -> CalibrationDataReader:
    """An onnxruntime `CalibrationDataReader` feeding `batches` to the graph's "input", one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):  # set_range + __len__: what "CalibStridedMinMax" calls
        def __init__(self) -> None:
            self.set_range(0, len(batches))

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.queue = iter(batches[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.queue, None)
            return None if x is None else {"input": x}

    return Batches()


def quantize_onnx(
    fp32_path: str | Path,
    out: str | Path,
    images: torch.Tensor,
    stats: NormStats,
    *,
    method: str = "percentile",
) -> dict[str, object]:
    """Write the int8 QDQ model of `fp32_path` to `out` (see the module docstring); returns its settings.

    images: uint8 (N, C, S, S) calibration images; normalised here exactly as the predictors do.
    method: "percentile" (default, see above) or "minmax".
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}
    if method not in methods:
        raise ExportError(f"unknown calibration method {method!r}; choose {' or '.join(methods)}")
    op_types = sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - {"BatchNormalization"})
    with tempfile.TemporaryDirectory(prefix="reslab-int8-") as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        stem = _stem_convs(onnx.load(str(pre)))
        quantize_static(
            str(pre),
            str(out),
            calibration_reader(calibration_batches(images, stats)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types,
            nodes_to_exclude=stem,
            calibrate_method=methods[method],
            extra_options={"CalibStridedMinMax": 1, "CalibPercentile": PERCENTILE},
        )
    return {
        "format": "QDQ",
        "weights": "int8 per output channel",
        "activations": "uint8 per tensor",
        "float32_nodes": stem + ["BatchNormalization"],
        "calibration_method": method,
        "percentile": PERCENTILE if method == "percentile" else None,
        "calibration_images": len(images),
    }


def write_int8(
    fp32_path: str | Path,
    out: str | Path,
    images: torch.Tensor,
    stats: NormStats,
    *,
    method: str = "percentile",
    source: str = "",
) -> dict[str, object]:
    """`quantize_onnx`, then the fp32 file's reslab.* metadata with precision "int8" and the settings."""
    settings = quantize_onnx(fp32_path, out, images, stats, method=method)
    settings.update(calibration_source=source or f"{len(images)} images")
    _copy_metadata(Path(fp32_path), Path(out), {"precision": "int8", "quantization": settings})
    return settings


def _copy_metadata(fp32_path: Path, int8_path: Path, extra: dict[str, object]) -> None:
    import onnx

    source = onnx.load(str(fp32_path), load_external_data=False)
    model = onnx.load(str(int8_path))
    values = {p.key: p.value for p in source.metadata_props}
    values.update({f"reslab.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = "reslab export --int8: input is normalised float32 (B, C, S, S); see reslab.* metadata"
    onnx.save(model, str(int8_path))


def compare_files(
    fp32_path: Path, int8_path: Path, images: torch.Tensor, labels: torch.Tensor | None, batch: int = 64
) -> dict[str, float]:
    """Both files through `OnnxPredictor` on uint8 images: agreement, max |diff|, scale, accuracies."""
    ref_predictor, int8_predictor = OnnxPredictor(fp32_path), OnnxPredictor(int8_path)
    ref = torch.cat([ref_predictor(images[i : i + batch]) for i in range(0, len(images), batch)])
    got = torch.cat([int8_predictor(images[i : i + batch]) for i in range(0, len(images), batch)])
    out = {
        "agreement": (ref.argmax(1) == got.argmax(1)).float().mean().item(),
        "max_abs_diff": (ref - got).abs().max().item(),
        "logit_scale": ref.abs().max().item(),
    }
    if labels is not None:
        out["accuracy_fp32"] = (ref.argmax(1) == labels).float().mean().item()
        out["accuracy_int8"] = (got.argmax(1) == labels).float().mean().item()
    return out


def int8_path_for(fp32_path: Path) -> Path:
    """model.onnx -> model.int8.onnx, beside it."""
    return fp32_path.with_name(f"{fp32_path.stem}.int8{fp32_path.suffix}")


def export_int8(
    fp32_path: str | Path,
    data: CalibrationSet,
    stats: NormStats,
    *,
    min_agreement: float = MIN_AGREEMENT,
    out: str | Path | None = None,
    method: str = "percentile",
) -> Int8Result:
    """Quantise the fp32 ONNX file written by `export_model` on `data.images`, then check it against
    that file on `data.holdout` (get `data` from `calibration_set`, before the fp32 export, so that
    missing calibration data fails fast).

    Writes `out` (default <fp32 stem>.int8.onnx) and its sidecar `<out>.json`. Raises ExportError,
    writing nothing, when top-1 agreement on the held-out images is below `min_agreement`.
    """
    start = time.perf_counter()
    fp32_path = Path(fp32_path)
    out = Path(out) if out is not None else int8_path_for(fp32_path)
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"--min-agreement must be in [0, 1], got {min_agreement:g}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged(out) as staging:  # a rejected or failed file never replaces a previous one at `out`
        source = f"{data.source} (random sample, seed {data.seed})"
        settings = write_int8(fp32_path, staging, data.images, stats, method=method, source=source)
        check = compare_files(fp32_path, staging, data.holdout, data.holdout_labels)
        if not check["agreement"] >= min_agreement:
            raise ExportError(
                f"int8 model rejected, not written: top-1 agreement with float32 is "
                f"{100 * check['agreement']:.2f}% on {data.holdout_source}, below --min-agreement "
                f"{100 * min_agreement:g}% (max |logit diff| {check['max_abs_diff']:.3g} at logit "
                f"scale {check['logit_scale']:.3g}); try other or more --calibration images, lower "
                "--min-agreement if that difference is acceptable, or deploy the float32 file"
            )
    result = Int8Result(
        out,
        out.with_name(out.name + ".json"),
        data.source,
        data.holdout_source,
        check["agreement"],
        check["max_abs_diff"],
        check["logit_scale"],
        check.get("accuracy_fp32"),
        check.get("accuracy_int8"),
    )
    fp32_sidecar = fp32_path.with_name(fp32_path.name + ".json")
    sidecar = json.loads(fp32_sidecar.read_text()) if fp32_sidecar.is_file() else {}
    sidecar.update(
        precision="int8",
        quantization=settings,
        verification={
            "reference": f"float32 ONNX file {fp32_path.name}",
            "images": data.holdout_source,
            **check,
            "min_agreement": min_agreement,
        },
    )
    atomic_write_bytes(result.sidecar, (json.dumps(sidecar, indent=2) + "\n").encode())
    result.seconds = time.perf_counter() - start
    return result
