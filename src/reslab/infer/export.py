"""Export a network for other runtimes: ONNX, TorchScript, torch.export ExportedProgram (.pt2).

What is exported is the BN-folded float32 network on *normalised* input:
  input  "input"  float32 (B, C, S, S), x = (pixel / 255 - mean) / std, batch dimension dynamic
  output "logits" float32 (B, num_classes)
The graph's logits are the network's own. A temperature stored by `reslab calibrate` travels as
metadata (reslab.temperature, and "output" in the sidecar): probabilities = softmax(logits / T).
It is not folded into the graph, so that `reslab predict` / `serve` apply it in one place after
any backend (reslab.infer.backends.TemperatureScaled) and the int8 file is checked against the
fp32 one on the same logits.
The preprocessing (mean, std, input size, resize rule, class names) travels with the file: in
the ONNX metadata_props (keys "reslab.*"), in the TorchScript / .pt2 extra file "reslab.json",
and always in a sidecar JSON next to the output (`<out>.json`). `reslab predict` and `reslab serve`
read them back from an ONNX file (reslab.infer.backends), so the file alone is enough to deploy.

Every export is verified right away: the exported file is loaded back (onnxruntime's
CPUExecutionProvider for ONNX) and run on the same random inputs as the PyTorch network at two
batch sizes; the export fails with `ExportError` when max |logit diff| exceeds
`tolerance * max(1, max |logit|)` (tolerance 1e-4 by default).

An int8 ONNX file is a second step on top of the float32 one: see reslab.infer.quantize.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reslab.atomic import atomic_write_bytes, staged
from reslab.errors import ReslabError
from reslab.infer.fast import fold_batchnorm
from reslab.infer.session import onnx_session
from reslab.models import count_params
from reslab.models.resnet import ResNet
from reslab.weights import Weights

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
DEFAULT_TOLERANCE = 1e-4  # max |logit diff| / max(1, max |logit|)
CHECK_BATCHES = (1, 7)  # batch sizes run through the exported file to verify it


class ExportError(ReslabError):
    """An export that failed or whose output does not match PyTorch."""


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    exporter: str  # which code path wrote the file (e.g. "torch.onnx dynamo")
    max_abs_diff: float  # over CHECK_BATCHES, exported file vs the unfolded PyTorch network
    logit_scale: float  # max |logit| of the reference, the scale the tolerance is relative to
    notes: list[str] = field(default_factory=list)


def preprocessing_info(weights: Weights, num_params: int = 0) -> dict[str, object]:
    """Everything a runtime needs to feed the exported graph, as plain JSON values."""
    meta, stats = weights.meta, weights.stats
    return {
        "model": meta.model,
        "options": dict(meta.options),
        "precision": "fp32",  # "int8" in the file written by reslab.infer.quantize
        "num_params": num_params,  # of the PyTorch network (BN included), for reports
        "dataset": meta.dataset,
        "data_dir": meta.data_dir,
        "metrics": dict(meta.metrics),
        "evaluation": dict(meta.evaluation),
        "temperature": meta.temperature,  # divide the logits by it before the softmax (1.0: uncalibrated)
        "temperature_fit": dict(meta.temperature_fit),
        "num_classes": meta.num_classes,
        "classes": list(meta.classes),
        "in_chans": meta.in_chans,
        "input_size": meta.input_size,
        "resize": meta.resize,
        "color": "L" if meta.in_chans == 1 else "RGB",
        "mean": stats.mean.float().cpu().tolist(),  # pixel/255 units, shape (C, 1, 1) or (C, H, W)
        "std": stats.std.float().cpu().tolist(),
        "input": {
            "name": "input",
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", meta.in_chans, meta.input_size, meta.input_size],
            "normalisation": "x = (pixel / 255 - mean) / std",
        },
        "output": {
            "name": "logits",
            "dtype": "float32",
            "shape": ["batch", meta.num_classes],
            "probabilities": f"softmax(logits / temperature), temperature = {meta.temperature:g}",
        },
        "torch_version": torch.__version__,
        "reslab_version": meta.reslab_version,
    }


def _compare(
    reference: ResNet, run: Callable[[torch.Tensor], np.ndarray], in_chans: int, size: int, tolerance: float, what: str
) -> tuple[float, float]:
    """(max |diff|, max |logit|) of `run` against `reference` on seeded random normalised inputs."""
    gen = torch.Generator().manual_seed(0)
    worst, scale = 0.0, 0.0
    for batch in CHECK_BATCHES:
        x = torch.randn(batch, in_chans, size, size, generator=gen)
        with torch.inference_mode():
            expected = reference(x).numpy()
        got = np.asarray(run(x))
        if got.shape != expected.shape:
            raise ExportError(f"{what}: output shape {got.shape} at batch {batch}, expected {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    if not worst <= tolerance * max(1.0, scale):  # also catches NaN
        raise ExportError(
            f"{what} does not match PyTorch: max |logit diff| {worst:.3g} > "
            f"{tolerance:g} x max(1, max |logit| = {scale:.3g})"
        )
    return worst, scale


def _onnx_export(net: ResNet, example: torch.Tensor, out: Path) -> str:
    """Write ONNX with a dynamic batch axis: torch.export-based exporter first, TorchScript's after."""
    log = io.StringIO()
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: batch}},
                verbose=False,
            )
            program.save(str(out))
        return "torch.onnx.export(dynamo=True)"
    except Exception as first:  # noqa: BLE001  (broad on purpose:)
        # the dynamo exporter's limitations surface as any of torch._dynamo's, torch.export's and
        # onnxscript's exception types (and plain RuntimeError / TypeError), differing between torch
        # versions; each means "try the legacy exporter", and both failing is an ExportError naming both.
        try:
            with contextlib.redirect_stdout(log), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    net,
                    (example,),
                    str(out),
                    dynamo=False,
                    input_names=["input"],
                    output_names=["logits"],
                    opset_version=17,
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                )
            return f"torch.onnx.export(dynamo=False) after the dynamo exporter failed: {type(first).__name__}"
        except Exception as second:  # noqa: BLE001  (as above: reported with the first, never swallowed)
            raise ExportError(f"ONNX export failed with both exporters: dynamo: {first}; legacy: {second}") from second


def export_onnx(net: ResNet, reference: ResNet, info: dict[str, object], out: Path, tolerance: float) -> ExportResult:
    import onnx

    size, chans = int(info["input_size"]), int(info["in_chans"])
    exporter = _onnx_export(net, torch.randn(2, chans, size, size), out)
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"reslab.{key}", value if isinstance(value, str) else json.dumps(value)
    proto.doc_string = "reslab export: input is normalised float32 (B, C, S, S); see reslab.* metadata"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    session = onnx_session(out)  # the session predict and serve run the file in
    input_name = session.get_inputs()[0].name
    diff, scale = _compare(
        reference,
        lambda x: session.run(None, {input_name: x.numpy()})[0],
        chans,
        size,
        tolerance,
        f"ONNX file {out} under onnxruntime",
    )
    return ExportResult(out, Path(), "onnx", exporter, diff, scale)


def export_torchscript(
    net: ResNet, reference: ResNet, info: dict[str, object], out: Path, tolerance: float
) -> ExportResult:
    size, chans = int(info["input_size"]), int(info["in_chans"])
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings about the input-shape check (a constant here); TorchScript's deprecation.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, torch.randn(2, chans, size, size))
        torch.jit.save(traced, str(out), _extra_files={"reslab.json": json.dumps(info)})
        loaded = torch.jit.load(str(out), map_location="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diff, scale = _compare(
            reference, lambda x: loaded(x).detach().numpy(), chans, size, tolerance, f"TorchScript file {out}"
        )
    return ExportResult(out, Path(), "torchscript", "torch.jit.trace", diff, scale)


def export_exported_program(
    net: ResNet, reference: ResNet, info: dict[str, object], out: Path, tolerance: float
) -> ExportResult:
    size, chans = int(info["input_size"]), int(info["in_chans"])
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.export.export(net, (torch.randn(2, chans, size, size),), dynamic_shapes={"x": {0: batch}})
    except Exception as exc:  # noqa: BLE001  (UserError, Unsupported, guard errors, ...: all one ExportError)
        raise ExportError(f"torch.export failed: {str(exc).splitlines()[0]}") from exc
    torch.export.save(program, str(out), extra_files={"reslab.json": json.dumps(info)})
    loaded = torch.export.load(str(out)).module()
    diff, scale = _compare(
        reference, lambda x: loaded(x).detach().numpy(), chans, size, tolerance, f"ExportedProgram {out}"
    )
    return ExportResult(out, Path(), "exported-program", "torch.export.export", diff, scale)


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "exported-program": export_exported_program}


def export_model(
    weights: Weights,
    fmt: str,
    out: str | Path | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Fold, export, write the sidecar JSON and verify; `out` defaults to ./<model name><suffix>."""
    meta = weights.meta
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    default_name = f"{meta.model}{FORMATS[fmt]}"
    if out is None:
        out = Path(default_name)
    elif Path(out).is_dir() or str(out).endswith(("/", os.sep)):  # a folder, existing or meant
        out = Path(out) / default_name
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reference = copy.deepcopy(weights.model).float().cpu().eval()
    net = fold_batchnorm(reference)
    info = preprocessing_info(weights, count_params(reference))
    with staged(out) as staging:  # a failed export or check leaves a previous file at `out` untouched
        result = EXPORTERS[fmt](net, reference, info, staging, tolerance)
    result.path = out
    result.sidecar = out.with_name(out.name + ".json")
    sidecar = dict(
        info,
        format=fmt,
        exporter=result.exporter,
        verification={
            "max_abs_logit_diff": result.max_abs_diff,
            "logit_scale": result.logit_scale,
            "batches": list(CHECK_BATCHES),
            "tolerance": tolerance,
            "reference": "unfolded float32 PyTorch network",
        },
    )
    atomic_write_bytes(result.sidecar, (json.dumps(sidecar, indent=2) + "\n").encode())
    return result
