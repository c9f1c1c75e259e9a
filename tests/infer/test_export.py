"""Exports load back in their runtime and match PyTorch at batch sizes 1 and 7 within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_testdata import CLASSES, make_weights

from reslab.cli import main as reslab_main
from reslab.infer.export import ExportError, export_model
from reslab.infer.fast import fold_batchnorm
from reslab.weights import load_weights

TOL = 1e-4  # max |logit diff| <= TOL * max(1, max |logit|)


def pytorch_logits(weights: Path, x: torch.Tensor) -> np.ndarray:
    _w = load_weights(weights)
    model, _, _, _ = _w.model, _w.meta, _w.stats.mean, _w.stats.std
    with torch.inference_mode():
        return model(x).numpy()


def check_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOL * max(1.0, np.abs(expected).max())


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x.numpy()})[0]


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 (ImageNet stem, projection shortcuts) taking 64x64 images, 1000 classes."""
    return make_weights(
        tmp_path_factory.mktemp("w") / "resnet18.safetensors", "resnet18", input_size=64, num_classes=1000
    )


def test_onnx_export_of_a_cifar_net_through_the_cli(
    weights_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import onnx

    assert reslab_main(["export", str(weights_file), "--format", "onnx", "-o", str(tmp_path) + "/"]) == 0
    out = tmp_path / "resnet20.onnx"
    assert "verified: max |logit diff|" in capsys.readouterr().out
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        check_close(run_onnx(out, x), pytorch_logits(weights_file, x))
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["reslab.classes"]) == CLASSES and props["reslab.input_size"] == "32"
    assert np.allclose(np.array(json.loads(props["reslab.mean"])).ravel(), [0.49, 0.48, 0.45])
    sidecar = json.loads((tmp_path / "resnet20.onnx.json").read_text())
    assert sidecar["classes"] == CLASSES and sidecar["input"]["shape"] == ["batch", 3, 32, 32]
    assert sidecar["verification"]["max_abs_logit_diff"] <= TOL * max(1.0, sidecar["verification"]["logit_scale"])


def test_onnx_export_of_an_imagenet_net(imagenet_weights: Path, tmp_path: Path) -> None:
    _w = load_weights(imagenet_weights)
    result = export_model(_w, "onnx", tmp_path / "r18.onnx")
    assert "dynamo=True" in result.exporter
    for batch in (1, 7):
        x = torch.randn(batch, 3, 64, 64)
        check_close(run_onnx(result.path, x), pytorch_logits(imagenet_weights, x))


def test_onnx_falls_back_to_the_legacy_exporter(
    weights_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo exporter failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    _w = load_weights(weights_file)
    result = export_model(_w, "onnx", tmp_path / "legacy.onnx")
    assert "dynamo=False" in result.exporter
    x = torch.randn(7, 3, 32, 32)
    check_close(run_onnx(result.path, x), pytorch_logits(weights_file, x))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_loads_back_and_matches(weights_file: Path, tmp_path: Path) -> None:
    _w = load_weights(weights_file)
    result = export_model(_w, "torchscript", tmp_path / "net.pt")
    files = {"reslab.json": ""}
    loaded = torch.jit.load(str(result.path), _extra_files=files)
    assert json.loads(files["reslab.json"])["classes"] == CLASSES
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            check_close(loaded(x).numpy(), pytorch_logits(weights_file, x))


def test_exported_program_loads_back_and_matches(
    weights_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default output is ./<model>.pt2
    _w = load_weights(weights_file)
    result = export_model(_w, "exported-program")
    assert result.path == Path("resnet20.pt2") and result.sidecar == Path("resnet20.pt2.json")
    loaded = torch.export.load(str(result.path)).module()
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            check_close(loaded(x).numpy(), pytorch_logits(weights_file, x))


def test_unknown_format_and_a_failed_check_are_errors(
    weights_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reslab.infer.export as export

    _w = load_weights(weights_file)
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(_w, "tflite", tmp_path / "x")

    def fold_wrongly(net):  # an exporter-side bug: the written network differs from the model
        folded = fold_batchnorm(net)
        folded.fc.bias.data += 1e-2
        return folded

    monkeypatch.setattr(export, "fold_batchnorm", fold_wrongly)
    (tmp_path / "x.pt").write_bytes(b"a previous export")
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export_model(_w, "torchscript", tmp_path / "x.pt")
    assert (tmp_path / "x.pt").read_bytes() == b"a previous export"  # a failed check replaces nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]  # and leaves no temp folder
