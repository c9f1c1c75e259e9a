"""A temperature stored by `reslab calibrate` reaches predict, serve and exported files: the
probabilities change, the ranking of the classes does not, whichever backend runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from infer_testdata import make_weights

from reslab.cli import main as reslab_main
from reslab.infer.backends import TemperatureScaled, load_predictor
from reslab.infer.export import export_model
from reslab.weights import load_weights, read_meta, write_meta

T = 3.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(weights, the same weights with T = 3 stored)."""
    root = tmp_path_factory.mktemp("t")
    plain = make_weights(root / "plain.safetensors", name="resnet_cifar_8")
    return plain, write_meta(plain, dataclasses.replace(read_meta(plain), temperature=T), root / "t.safetensors")


def images(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_the_torch_backend_divides_the_logits(pair: tuple[Path, Path]) -> None:
    plain, calibrated = (load_predictor(p, backend="torch", precision="fp32")[0] for p in pair)
    assert isinstance(calibrated, TemperatureScaled) and not isinstance(plain, TemperatureScaled)
    assert calibrated.describe()["temperature"] == T and calibrated.preprocess.input_size == 32
    x = images()
    raw, scaled = plain(x), calibrated(x)
    torch.testing.assert_close(scaled, raw / T)
    assert torch.equal(scaled.argmax(1), raw.argmax(1))
    assert (scaled.softmax(1).amax(1) < raw.softmax(1).amax(1)).all()  # T > 1: less confident


def test_predict_prints_calibrated_probabilities(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from PIL import Image

    files = []
    for i, image in enumerate(images(3)):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(files[-1])
    results = {}
    for path in pair:
        args = ["predict", str(path), *files, "--json", "--top-k", "10", "--backend", "torch", "--precision", "fp32"]
        assert reslab_main(args) == 0
        results[path.name] = json.loads(capsys.readouterr().out)
    raw = load_predictor(pair[0], backend="torch", precision="fp32")[0](images(3))  # PNG is lossless: same pixels
    for row_plain, row_cal, logits in zip(results["plain.safetensors"], results["t.safetensors"], raw):
        plain_ids = [p["class_id"] for p in row_plain["predictions"]]
        assert plain_ids == [p["class_id"] for p in row_cal["predictions"]]  # same ranking
        expected = (logits / T).softmax(0)
        got = [p["probability"] for p in row_cal["predictions"]]
        assert got == pytest.approx(expected[plain_ids].tolist(), abs=2e-6)
        assert got[0] < row_plain["predictions"][0]["probability"]


def test_an_onnx_export_carries_t_and_predict_applies_it(pair: tuple[Path, Path], tmp_path: Path) -> None:
    import onnx

    result = export_model(load_weights(pair[1]), "onnx", tmp_path / "t.onnx")
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(props["reslab.temperature"]) == T
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["temperature"] == T and "softmax(logits / temperature)" in sidecar["output"]["probabilities"]
    onnx_predictor, meta, _ = load_predictor(result.path)
    assert meta.temperature == T and isinstance(onnx_predictor, TemperatureScaled)
    x = images()
    torch_plain = load_predictor(pair[0], backend="torch", precision="fp32")[0](x)
    torch.testing.assert_close(onnx_predictor.backend(x), torch_plain, atol=1e-4, rtol=1e-4)  # raw graph logits
    torch.testing.assert_close(onnx_predictor(x), torch_plain / T, atol=1e-4, rtol=1e-4)
