"""Every normalisation a run can be trained with x every way its weights are used afterwards.

A real tiny run per `data.normalize` (the paper's per-pixel mean beside a per-channel std of ones,
per-channel mean/std, none); then `predict` on every `--backend` and on the exported .onnx files
(fp32 and int8), `serve` on the same predictors, `embed`, and `export` in every format, each
checked against the documented computation: (pixel / 255 - mean) / std into the eval-mode network.
A pairing that cannot load its own weights (as pixel-mean under onnxruntime once did) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from tiny_run import tiny_tree, train_tiny_run

from reslab.cli import main
from reslab.data.preprocess import load_image
from reslab.infer.backends import is_onnx_file, load_predictor
from reslab.infer.serve import create_app
from reslab.vocab import INFER_BACKENDS, NORMALIZE_KINDS
from reslab.weights import load_weights

TOLERANCE = 1e-4  # probabilities: folded float32 PyTorch and onnxruntime fp32 against the plain network


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tree(tmp_path_factory.mktemp("norm-tree"))


@pytest.fixture(scope="module", params=NORMALIZE_KINDS)
def run(request: pytest.FixtureRequest, tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(f"norm-{request.param}")
    return train_tiny_run(root / "run", tree, f"data.normalize={request.param}")


def images(tree: Path) -> list[Path]:
    return sorted((tree / "val").rglob("*.png"))[:3] + sorted((tree / "test").rglob("*.png"))[-2:]


def reference(run: Path, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, pre-logits features) of the plain eval-mode network, image by image, with
    the weights' flip averaging and temperature for the probabilities."""
    weights = load_weights(run)
    meta, model, stats = weights.meta, weights.model.eval(), weights.stats
    probs, feats = [], []
    for path in paths:
        u8 = load_image(path, in_chans=meta.in_chans, input_size=meta.input_size, resize=meta.resize)
        x = (u8[None].float() / 255.0 - stats.mean) / stats.std
        with torch.inference_mode():
            logits = model(x)
            if meta.tta_flip:
                logits = (logits + model(x.flip(-1))) / 2
            probs.append((logits / meta.temperature).softmax(-1)[0])  # T: fitted on val at the run's end
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True)[0])
    return torch.stack(probs), torch.stack(feats)


def predicted(capsys: pytest.CaptureFixture, model: str | Path, paths: list[Path], *options: str) -> torch.Tensor:
    """Class probabilities (in class order) that `reslab predict --json` prints for `paths`."""
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, paths), "--json", "-k", "2", *options]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == [str(p) for p in paths]
    return torch.tensor(
        [[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["class_id"])] for r in rows]
    )


def exported(capsys: pytest.CaptureFixture, run: Path, out: Path, *options: str) -> Path:
    capsys.readouterr()
    assert main(["export", str(run), "-o", str(out), *options]) == 0, capsys.readouterr().err
    return out


@pytest.mark.parametrize("backend", INFER_BACKENDS)
def test_predict_on_every_backend(run: Path, tree: Path, backend: str, capsys: pytest.CaptureFixture) -> None:
    paths = images(tree)
    expected, _ = reference(run, paths)
    got = predicted(capsys, run, paths, "--backend", backend, "--precision", "fp32")
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)
    # as a user runs it: no option at all (the precision the machine prefers; bf16 moves the digits)
    got = predicted(capsys, run / "weights.safetensors", paths)
    assert got.shape == expected.shape and torch.allclose(got.sum(1), torch.ones(len(paths)), atol=1e-4)


def test_exported_onnx_files_predict_and_serve(
    run: Path, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    paths = images(tree)
    expected, _ = reference(run, paths)
    fp32 = exported(capsys, run, tmp_path / "net.onnx")
    torch.testing.assert_close(predicted(capsys, fp32, paths), expected, atol=TOLERANCE, rtol=0)
    calibration = ["--calibration", str(tree / "train"), "--calibration-images", "16", "--verify-images", "8"]
    exported(capsys, run, tmp_path / "q.onnx", "--int8", *calibration, "--min-agreement", "0")
    int8 = tmp_path / "q.int8.onnx"
    got = predicted(capsys, int8, paths)  # quantised: loads and runs with the same preprocessing record
    assert torch.allclose(got.sum(1), torch.ones(len(paths)), atol=1e-4)
    assert (got - expected).abs().max() < 0.25
    for model in (fp32, int8):
        served = serve_probabilities(model, "auto", paths)
        torch.testing.assert_close(served, predicted(capsys, model, paths), atol=2e-6, rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_export_formats_compute_the_network(
    run: Path, tree: Path, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture
) -> None:
    paths = images(tree)
    out = exported(capsys, run, tmp_path / f"net.{fmt}", "--format", fmt)
    weights = load_weights(run)
    meta = weights.meta
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())  # what a runtime feeds the graph by
    mean, std = torch.tensor(sidecar["mean"]), torch.tensor(sidecar["std"])
    torch.testing.assert_close((mean, std), (weights.stats.mean, weights.stats.std), atol=0, rtol=0)
    u8 = [load_image(p, in_chans=meta.in_chans, input_size=meta.input_size, resize=meta.resize) for p in paths]
    x = (torch.stack(u8).float() / 255.0 - mean) / std
    net = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out)).module()
    with torch.inference_mode():
        torch.testing.assert_close(net(x), weights.model.eval()(x), atol=1e-4, rtol=1e-4)


def serve_probabilities(model: str | Path, backend: str, paths: list[Path]) -> torch.Tensor:
    """POST /predict of each image to the app `reslab serve` runs for `model` on `backend`."""
    precision = "auto" if is_onnx_file(model) else "fp32"  # an ONNX file runs as it was exported
    predictor, meta, params = load_predictor(model, backend=backend, precision=precision)
    with TestClient(create_app(predictor, meta, num_params=params)) as client:
        rows = []
        for path in paths:
            reply = client.post("/predict", files={"file": (path.name, path.read_bytes())}, params={"top_k": 2})
            assert reply.status_code == 200, reply.text
            rows.append([p["probability"] for p in sorted(reply.json()["predictions"], key=lambda p: p["class_id"])])
    return torch.tensor(rows)


@pytest.mark.parametrize("backend", INFER_BACKENDS)
def test_serve_on_every_backend(run: Path, tree: Path, backend: str) -> None:
    paths = images(tree)
    expected, _ = reference(run, paths)
    torch.testing.assert_close(serve_probabilities(run, backend, paths), expected, atol=TOLERANCE, rtol=0)


def test_embed(run: Path, tree: Path, tmp_path: Path) -> None:
    paths = images(tree)
    _, expected = reference(run, paths)
    out = tmp_path / "rows.npy"
    assert main(["embed", str(run), *map(str, paths), "-o", str(out)]) == 0
    torch.testing.assert_close(torch.from_numpy(np.load(out)), expected, atol=1e-5, rtol=1e-5)
