"""What `predict` and `serve` run: PyTorch weights on the fast path, or an exported ONNX file.

Both backends take what a user holds after decoding, a uint8 batch (B, C, H, W), and return
float32 logits (B, num_classes); they normalise the pixels themselves (x = u8 * scale + shift,
scale = 1 / (255 std), shift = -mean / std, as FastPredictor does):
  FastPredictor  (reslab.infer.fast)  a .safetensors file, a run directory or a shipped name
  OnnxPredictor                       a .onnx file written by `reslab export` (fp32 or int8),
                                      run by onnxruntime's CPUExecutionProvider
`load_predictor` picks one from what the user named. An ONNX file carries its preprocessing
(input size, resize rule, mean/std, classes) in metadata_props "reslab.*", written by
`reslab.infer.export`; a file without them was not written by reslab and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from reslab.errors import CheckpointError, ConfigError, InputShapeError
from reslab.weights import WeightsMeta

ONNX_SUFFIX = ".onnx"
META_PREFIX = "reslab."
REQUIRED_KEYS = ("model", "num_classes", "in_chans", "input_size", "mean", "std")


class Predictor(Protocol):
    """uint8 images (B, C, H, W) -> float32 logits (B, num_classes)."""

    in_chans: int
    compiled: bool  # True when the first calls of new batch sizes are slow (serve warms them up)

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, object]: ...


def is_onnx_file(source: str | Path) -> bool:
    return Path(source).suffix.lower() == ONNX_SUFFIX


def pixel_affine(mean: torch.Tensor, std: torch.Tensor, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, C, 1|H, 1|W) float32, with x = u8 * scale + shift."""
    mean64, std64 = mean.double(), std.double()
    if mean64.dim() != 3 or std64.dim() != 3 or mean64.shape[0] != in_chans:
        raise InputShapeError(
            f"mean/std must have shape ({in_chans}, 1, 1) or ({in_chans}, H, W); "
            f"got {tuple(mean.shape)} and {tuple(std.shape)}"
        )
    return (1.0 / (255.0 * std64)).float().unsqueeze(0), (-mean64 / std64).float().unsqueeze(0)


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session; intra-op threads = torch.get_num_threads() unless given."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initializers and such
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_onnx_meta(
    props: dict[str, str], path: str | Path
) -> tuple[WeightsMeta, torch.Tensor, torch.Tensor, dict[str, object]]:
    """metadata_props of a reslab export -> (meta, mean, std, every reslab.* value decoded)."""
    values: dict[str, object] = {}
    for key, raw in props.items():
        if key.startswith(META_PREFIX):
            try:
                values[key[len(META_PREFIX) :]] = json.loads(raw)
            except json.JSONDecodeError:
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
    meta = WeightsMeta(
        model=str(values["model"]),
        num_classes=int(values["num_classes"]),
        in_chans=int(values["in_chans"]),
        options=dict(values.get("options") or {}),
        classes=list(values.get("classes") or []),
        input_size=int(values["input_size"]),
        resize=str(values.get("resize", "shorter-center-crop")),
        dataset=str(values.get("dataset", "")),
        metrics=dict(values.get("metrics") or {}),
        reslab_version=str(values.get("reslab_version", "")),
    )
    mean = torch.tensor(values["mean"], dtype=torch.float32)
    std = torch.tensor(values["std"], dtype=torch.float32)
    return meta, mean, std, values


class OnnxPredictor:
    """uint8 images (B, C, H, W) -> float32 logits, through an ONNX file written by `reslab export`.

    The graph takes normalised float32 NCHW ("input") and returns "logits"; an int8 file does
    its own quantisation inside the graph (QuantizeLinear on the input side), so both precisions
    are fed the same way.
    """

    compiled = False

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no such ONNX file: {path}")
        try:
            self.session = onnx_session(path, threads)
        except Exception as exc:  # noqa: BLE001  (onnxruntime's InvalidProtobuf, Fail, ... derive from Exception)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path} is not a readable ONNX file ({first})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta, self.mean, self.std, self.info = read_onnx_meta(props, path)
        self.path = path
        self.in_chans = self.meta.in_chans
        self.precision = str(self.info.get("precision", "fp32"))
        self.num_params = int(self.info.get("num_params", 0))
        self.scale, self.shift = pixel_affine(self.mean, self.std, self.in_chans)
        self.input_name = self.session.get_inputs()[0].name
        self.threads = threads or torch.get_num_threads()

    def normalise(self, images: torch.Tensor) -> np.ndarray:
        """(B, C, H, W) uint8 -> contiguous float32 NCHW normalised array."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.in_chans:
            raise InputShapeError(
                f"expected a uint8 batch (B, {self.in_chans}, H, W); got {images.dtype} {tuple(images.shape)}"
            )
        x = torch.addcmul(self.shift, images.contiguous().float(), self.scale)
        return x.numpy()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input_name: self.normalise(images)})[0]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    def describe(self) -> dict[str, object]:
        return {"backend": "onnxruntime", "file": str(self.path), "precision": self.precision, "threads": self.threads}


def load_predictor(
    source: str | Path, *, fold: bool = True, precision: str = "auto", compile: bool = False
) -> tuple[Predictor, WeightsMeta, int]:
    """(predictor, meta, parameter count) for weights or an ONNX file named by the user.

    fold / precision / compile shape the PyTorch fast path; an ONNX file runs as it was
    exported, so asking for them with one is an error rather than silently ignored.
    """
    if is_onnx_file(source):
        if compile or not fold or precision != "auto":
            raise ConfigError(
                "--precision, --compile and --no-fold apply to PyTorch weights; an ONNX file "
                "runs as `reslab export` wrote it (fp32, or int8 with --int8)"
            )
        predictor = OnnxPredictor(source)
        return predictor, predictor.meta, predictor.num_params

    from reslab.infer.fast import FastPredictor
    from reslab.models import count_params
    from reslab.weights import load_weights

    model, meta, mean, std = load_weights(source)
    fast = FastPredictor(model, mean, std, fold=fold, precision=precision, compile=compile)
    return fast, meta, count_params(model)
