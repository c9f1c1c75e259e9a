"""What `predict` and `serve` run: PyTorch weights on the fast path, or an exported ONNX file.

Both backends take what a user holds after decoding, a uint8 batch (B, C, H, W), and return
float32 logits (B, num_classes); they normalise the pixels themselves with the weights'
`NormStats.apply`, the affine of every consumer (reslab.data.preprocess):
  FastPredictor  (reslab.infer.fast)  a .safetensors file, a run directory or a shipped name
  OnnxPredictor                       a .onnx file written by `reslab export` (fp32 or int8),
                                      run by onnxruntime's CPUExecutionProvider
`load_predictor` picks one from what the user named and `--backend` (`choose_backend`): for
PyTorch weights, "auto" (the default) means onnxruntime on their ONNX export, made once and cached
beside the weights, verified against PyTorch when made and trusted afterwards only while its
checksums match (reslab.infer.onnx_cache); PyTorch when onnxruntime is not installed, when a
PyTorch-only option is asked for (--compile, --no-fold, --precision bf16) or when the export fails
its verification (with a one-line warning). predict and serve run on the CPU (the PyTorch path
has no device option), where onnxruntime is the faster of the two on the same folded float32
network. An ONNX file carries its preprocessing
(input size, resize rule, mean/std, classes) in metadata_props "reslab.*", written by
`reslab.infer.export`; a file without them was not written by reslab and is refused, and so is
one whose metadata disagrees with its graph (channels, input size, number of logits).
"""

from __future__ import annotations

import importlib.util
import json
import reprlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from reslab.data.norm import NormStats
from reslab.data.preprocess import Preprocess
from reslab.errors import CheckpointError, ConfigError, InputShapeError
from reslab.infer.session import onnx_session
from reslab.vocab import INFER_BACKENDS, ONNX_PRECISIONS
from reslab.weights import Weights, WeightsMeta, load_weights, read_meta, resolve_weights

ONNX_SUFFIX = ".onnx"
META_PREFIX = "reslab."
REQUIRED_KEYS = ("model", "num_classes", "in_chans", "input_size", "mean", "std")


class Predictor(Protocol):
    """uint8 images (B, C, H, W) -> float32 logits (B, num_classes)."""

    in_chans: int
    preprocess: Preprocess  # how a file becomes the uint8 (C, S, S) this predictor takes
    compiled: bool  # True when the first calls of new batch sizes are slow (serve warms them up)

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, object]: ...


class TemperatureScaled:
    """A predictor whose logits are divided by the temperature `reslab calibrate` stored with the
    weights: the one place where predict and serve apply it, whatever the backend. Backends return
    the network's own logits (an exported graph too: `reslab export` records T in the metadata,
    reslab.temperature, rather than in the graph), and `load_predictor` wraps them in this.
    Everything but the call is the backend's."""

    def __init__(self, backend: Predictor, temperature: float) -> None:
        self.backend = backend
        self.temperature = temperature

    def __getattr__(self, name: str):  # in_chans, preprocess, compiled, meta, ...: the backend's
        if name == "backend":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.backend(images) / self.temperature

    def describe(self) -> dict[str, object]:
        return {**self.backend.describe(), "temperature": self.temperature}


def with_temperature(predictor: Predictor, meta: WeightsMeta) -> Predictor:
    """`predictor`, its logits divided by the weights' temperature when they hold one."""
    return TemperatureScaled(predictor, meta.temperature) if meta.temperature != 1.0 else predictor


def is_onnx_file(source: str | Path) -> bool:
    return Path(source).suffix.lower() == ONNX_SUFFIX


def read_onnx_meta(props: dict[str, str], path: str | Path) -> tuple[WeightsMeta, NormStats, dict[str, object]]:
    """metadata_props of a reslab export -> (meta, normalisation, every reslab.* value decoded),
    each checked as a weights file's are (types, ranges, shapes)."""
    values: dict[str, object] = {}
    for key, raw in props.items():
        if key.startswith(META_PREFIX):
            try:
                values[key[len(META_PREFIX) :]] = json.loads(raw)
            except (json.JSONDecodeError, RecursionError):
                values[key[len(META_PREFIX) :]] = raw  # plain strings are stored unquoted
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if len(missing) == len(REQUIRED_KEYS):
        raise CheckpointError(
            f"{path} is an ONNX file without reslab metadata, so its preprocessing is "
            "unknown; export the weights with `reslab export WEIGHTS --format onnx`"
        )
    if missing:
        raise CheckpointError(
            f"{path} lacks reslab metadata {', '.join(missing)}; export it again with "
            "`reslab export WEIGHTS --format onnx`"
        )
    meta = WeightsMeta.from_values(values, str(path))
    stats = norm_stats_from_lists(values["mean"], values["std"], meta.in_chans, str(path), meta.input_size)
    precision, num_params = values.get("precision", "fp32"), values.get("num_params", 0)
    if precision not in ONNX_PRECISIONS:
        raise CheckpointError(f"{path}: metadata reslab.precision={reprlib.repr(precision)} is not fp32 or int8")
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 0:
        raise CheckpointError(f"{path}: metadata reslab.num_params={reprlib.repr(num_params)} is not a count")
    return meta, stats, values


def norm_stats_from_lists(
    mean: object, std: object, in_chans: int, where: str, input_size: int | None = None
) -> NormStats:
    """Nested lists of a mean and a std, each (C, 1, 1) or (C, S, S) -> checked `NormStats`
    (S = input_size when given, else any)."""
    try:
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError, RecursionError):
        raise CheckpointError(f"{where}: its reslab.mean / reslab.std metadata are not numeric arrays") from None

    def fits(t: torch.Tensor) -> bool:
        if t.dim() != 3 or t.shape[0] != in_chans:
            return False
        h, w = t.shape[1:]
        return (h, w) == (1, 1) or (h == w if input_size is None else h == w == input_size)

    # Each is per-channel (C, 1, 1) or per-pixel (C, S, S), independently: the paper's per-pixel
    # mean ("pixel-mean") comes with a per-channel std of ones, and the two broadcast together.
    if not (fits(mean_t) and fits(std_t)):
        size = "S" if input_size is None else input_size
        raise CheckpointError(
            f"{where}: reslab.mean / reslab.std have shapes {tuple(mean_t.shape)} and {tuple(std_t.shape)}; "
            f"expected ({in_chans}, 1, 1) or ({in_chans}, {size}, {size})"
        )
    if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all() and (std_t > 0).all()):
        raise CheckpointError(f"{where}: its normalisation holds non-finite values or a std <= 0")
    return NormStats(mean_t, std_t)


class OnnxPredictor:
    """uint8 images (B, C, H, W) -> float32 logits, through an ONNX file written by `reslab export`.

    The graph takes normalised float32 NCHW ("input") and returns "logits"; an int8 file does
    its own quantisation inside the graph (QuantizeLinear on the input side), so both precisions
    are fed the same way.
    """

    compiled = False
    cache = None  # the CachedOnnx record when this file is the cached export of weights (onnx_cache)

    def __init__(self, path: str | Path, *, threads: int | None = None, tta_flip: bool | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no such ONNX file: {path}")
        try:
            self.session = onnx_session(path, threads)
        except Exception as exc:  # noqa: BLE001  (onnxruntime's InvalidProtobuf, Fail, ... derive from Exception)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path} is not a readable ONNX file ({first})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta, self.stats, self.info = read_onnx_meta(props, path)
        self._affine = tuple(t.numpy() for t in self.stats.affine())  # (scale, shift), float32 (C, 1|S, 1|S)
        self.path = path
        self.in_chans = self.meta.in_chans
        self.tta_flip = self.meta.tta_flip if tta_flip is None else tta_flip
        self.precision = str(self.info.get("precision", "fp32"))  # checked by read_onnx_meta
        self.num_params = int(self.info.get("num_params", 0))  # checked by read_onnx_meta
        self.input_name = self._check_graph()
        self.threads = threads or torch.get_num_threads()

    def _check_graph(self) -> str:
        """The graph's input name, once its declared input (B, C, S, S) float and output (B, classes)
        agree with the metadata: otherwise every image would fail inside onnxruntime."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        meta = self.meta
        expected_in = [meta.in_chans, meta.input_size, meta.input_size]
        problems = []
        if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
            problems.append(f"it takes {[(i.type, i.shape) for i in inputs]}, not one float (B, C, S, S) input")
        elif any(isinstance(d, int) and d != e for d, e in zip(inputs[0].shape[1:], expected_in)):
            problems.append(
                f"its input is {inputs[0].shape} but the metadata says (B, {', '.join(map(str, expected_in))})"
            )
        if not outputs or len(outputs[0].shape) != 2:
            problems.append(f"its first output is not (B, classes) logits ({[(o.type, o.shape) for o in outputs]})")
        elif isinstance(outputs[0].shape[1], int) and outputs[0].shape[1] != meta.num_classes:
            problems.append(
                f"it returns {outputs[0].shape[1]} logits but the metadata names {meta.num_classes} classes"
            )
        if problems:
            raise CheckpointError(f"{self.path}: graph and reslab metadata disagree: {'; '.join(problems)}")
        return inputs[0].name

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.meta.in_chans, self.meta.input_size, self.meta.resize, self.stats)

    def normalise(self, images: torch.Tensor) -> np.ndarray:
        """(B, C, H, W) uint8 -> contiguous float32 NCHW normalised array."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.in_chans:
            raise InputShapeError(
                f"expected a uint8 batch (B, {self.in_chans}, H, W); got {images.dtype} {tuple(images.shape)}"
            )
        # NormStats.apply's affine, executed by numpy: the same float32 multiply and add, bit for bit,
        # but off torch's OpenMP pool, whose threads spin after an op and slow onnxruntime's own pool
        # (measured, 2 cores: resnet20 batch 16 took 141 ms per call with torch's op, 56 ms without).
        scale, shift = self._affine
        x = images.contiguous().numpy().astype(np.float32)
        np.multiply(x, scale, out=x)
        np.add(x, shift, out=x)
        return x

    def run(self, x: np.ndarray) -> torch.Tensor:
        """Normalised float32 NCHW -> logits (B, num_classes). The input is checked by `normalise`, so a
        failure inside onnxruntime, or logits of another shape, come from the file's graph."""
        try:
            logits = self.session.run(None, {self.input_name: x})[0]
        except Exception as exc:  # noqa: BLE001  (onnxruntime's Fail, InvalidArgument, ... derive from Exception)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self.path}: its graph failed to run ({first})") from None
        logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
        if logits.shape != (x.shape[0], self.meta.num_classes):
            raise CheckpointError(
                f"{self.path}: its graph returned logits of shape {tuple(logits.shape)}, "
                f"expected ({x.shape[0]}, {self.meta.num_classes})"
            )
        return logits

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalise(images)
        logits = self.run(x)
        if self.tta_flip:  # the mirrored normalised input, as evaluation flips it
            logits = (logits + self.run(np.ascontiguousarray(x[..., ::-1]))) / 2
        return logits

    def describe(self) -> dict[str, object]:
        return {
            "backend": "onnxruntime",
            "file": str(self.path),
            "precision": self.precision,
            "tta_flip": self.tta_flip,
            "threads": self.threads,
            **({} if self.cache is None else {"onnx_cache": self.cache.describe()}),
        }


def onnxruntime_available() -> bool:
    """Whether onnxruntime (to run) and onnx (to export) are installed. Only looked up, not
    imported: a broken installation still fails loudly where it is imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def choose_backend(requested: str, torch_only: list[str]) -> tuple[str, str]:
    """(backend, why) for PyTorch weights; `torch_only` names the PyTorch-only options asked for.

    auto -> onnxruntime when it is installed and no PyTorch-only option was asked for, else torch;
    an explicit choice is honoured, or refused in one line when it cannot be."""
    if requested not in INFER_BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(INFER_BACKENDS)}, got {requested!r}")
    if requested == "torch":
        return "torch", "--backend torch"
    if requested == "onnxruntime":
        if torch_only:
            raise ConfigError(f"{', '.join(torch_only)} apply to the PyTorch backend; drop them or use --backend torch")
        if not onnxruntime_available():
            raise ConfigError("--backend onnxruntime needs onnx and onnxruntime: pip install 'reslab[export]'")
        return "onnxruntime", "--backend onnxruntime"
    if torch_only:
        return "torch", f"auto: {', '.join(torch_only)} asked for"
    if not onnxruntime_available():
        return "torch", "auto: onnxruntime is not installed, pip install 'reslab[export]' for it"
    return "onnxruntime", "auto: faster than PyTorch on CPU"


Loaded = tuple[Predictor, WeightsMeta, int]  # what load_predictor returns: predictor, metadata, parameter count
Say = Callable[[str], None]  # receives one line about which backend runs and why


@dataclass(frozen=True)
class TorchOptions:
    """How the PyTorch fast path runs weights (`FastPredictor`); none of it applies to onnxruntime."""

    fold: bool = True  # fold BatchNorm into the convolutions
    precision: str = "auto"  # a vocab.INFER_PRECISIONS word
    compile: bool = False  # torch.compile

    def flags(self) -> list[str]:
        """The PyTorch-only flags these options amount to (under --backend auto, PyTorch then runs)."""
        flags = [flag for flag, on in (("--compile", self.compile), ("--no-fold", not self.fold)) if on]
        return flags + (["--precision bf16"] if self.precision == "bf16" else [])


def load_predictor(
    source: str | Path,
    *,
    backend: str = "auto",
    fold: bool = True,
    precision: str = "auto",
    compile: bool = False,
    tta_flip: bool | None = None,
    log: Callable[[str], object] | None = None,
    weights: Weights | None = None,
) -> Loaded:
    """(predictor, meta, parameter count) for weights or an ONNX file named by the user.

    backend: see `choose_backend`. fold / precision / compile shape the PyTorch fast path
    (precision "auto" and "fp32" both mean the float32 file under onnxruntime); an ONNX file runs
    as it was exported, so asking for them with one is an error rather than silently ignored.
    tta_flip (None: as the weights' metrics were measured) averages each image's and its mirror's
    logits. `log` receives one line saying which backend runs and why (and a line before a first
    export, and a warning line before falling back to PyTorch); without it a fallback is a warning.
    `weights`: the `Weights` the caller already loaded from `source` (Grad-CAM needs them too); the
    PyTorch backend runs them and a first ONNX export exports them, so the file is loaded once.
    """

    def say(line: str) -> None:
        if log is not None:
            log(line)
        elif line.startswith("warning: "):
            warnings.warn(line.removeprefix("warning: "), stacklevel=4)

    options = TorchOptions(fold, precision, compile)
    if is_onnx_file(source):
        return _onnx_file_predictor(Path(source), backend, options, tta_flip, say)
    chosen, why = choose_backend(backend, options.flags())
    if chosen == "onnxruntime":
        loaded = _cached_onnx_predictor(source, weights, backend == "onnxruntime", why, tta_flip, say)
        if loaded is not None:
            return loaded
        why = "auto: fallback, the ONNX export was not usable"
    return _torch_predictor(weights if weights is not None else load_weights(source), options, tta_flip, why, say)


def _onnx_file_predictor(source: Path, backend: str, options: TorchOptions, tta_flip: bool | None, say: Say) -> Loaded:
    """A user's .onnx file, run as it was exported (`load_predictor`)."""
    if options != TorchOptions():
        raise ConfigError(
            "--precision, --compile and --no-fold apply to PyTorch weights; an ONNX file "
            "runs as `reslab export` wrote it (fp32, or int8 with --int8)"
        )
    if backend == "torch":
        raise ConfigError(f"--backend torch needs PyTorch weights; {source} is an ONNX file, run by onnxruntime")
    predictor = OnnxPredictor(source, tta_flip=tta_flip)
    say(f"backend onnxruntime: {predictor.path} ({predictor.precision})")
    return with_temperature(predictor, predictor.meta), predictor.meta, predictor.num_params


def _cached_onnx_predictor(
    source: str | Path, weights: Weights | None, strict: bool, why: str, tta_flip: bool | None, say: Say
) -> Loaded | None:
    """Weights under onnxruntime on their cached, verified export (`load_predictor`); None when the
    export is not usable and auto falls back to PyTorch (`strict`, --backend onnxruntime: an error)."""
    from reslab.infer.export import ExportError
    from reslab.infer.onnx_cache import cached_onnx

    path = weights.path if weights is not None and weights.path is not None else resolve_weights(source)
    meta = weights.meta if weights is not None else read_meta(path)  # the weights' own record, not the export's
    try:
        cache = cached_onnx(path, log=say, weights=weights)
    except (ExportError, OSError) as exc:
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if strict:
            if isinstance(exc, OSError):
                raise ConfigError(
                    f"cannot write the ONNX export of {path} ({problem}); set RESLAB_CACHE_DIR to a "
                    "writable folder or use --backend torch"
                ) from None
            raise
        say(f"warning: the ONNX export of {path} is not usable ({problem}); running PyTorch instead")
        return None
    predictor = OnnxPredictor(cache.path, tta_flip=meta.tta_flip if tta_flip is None else tta_flip)
    predictor.cache = cache
    done = f"exported and verified in {cache.seconds:.1f} s" if cache.built else "reused, checksums match"
    say(
        f"backend onnxruntime ({why}): {cache.path} ({done}; max |logit diff| vs PyTorch "
        f"{cache.max_abs_diff:.2g}, tolerance {cache.tolerance:g} x max(1, {cache.logit_scale:.3g}))"
    )
    return with_temperature(predictor, meta), meta, predictor.num_params


def _torch_predictor(weights: Weights, options: TorchOptions, tta_flip: bool | None, why: str, say: Say) -> Loaded:
    """Weights on the PyTorch fast path (`load_predictor`)."""
    from reslab.infer.fast import FastPredictor
    from reslab.models import count_params

    flip = weights.meta.tta_flip if tta_flip is None else tta_flip
    o = options
    fast = FastPredictor(
        weights.model, weights.preprocess, fold=o.fold, precision=o.precision, compile=o.compile, tta_flip=flip
    )
    say(
        f"backend torch ({why}): {fast.precision}, "
        f"{'BatchNorm folded' if o.fold else 'BatchNorm kept'}{', compiled' if o.compile else ''}"
    )
    return with_temperature(fast, weights.meta), weights.meta, count_params(weights.model)
