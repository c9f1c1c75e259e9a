"""The default backend for weights: onnxruntime on their cached ONNX export, verified when built and
trusted only while its checksums match (reslab.infer.onnx_cache, reslab.infer.backends.load_predictor)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_testdata import make_weights

from reslab.cli import main as reslab_main
from reslab.infer import export as export_module
from reslab.infer import onnx_cache
from reslab.infer.backends import OnnxPredictor, choose_backend, load_predictor
from reslab.infer.export import ExportError
from reslab.infer.fast import FastPredictor
from reslab.weights import load_weights, save_weights

MODEL = "resnet_cifar_8"  # the smallest CIFAR ResNet: each export takes a second or two
TOL = 1e-4  # max |logit diff| <= TOL * max(1, max |logit|), as export_model verifies


@dataclass
class FirstUse:
    weights: Path
    lines: list[str]  # what load_predictor logged
    predictor: OnnxPredictor
    exported: list[Path]  # weights files exported


@pytest.fixture(scope="module")
def first_use(tmp_path_factory: pytest.TempPathFactory) -> FirstUse:
    """Weights used once with the default backend: exported, verified and cached beside them."""
    weights = make_weights(tmp_path_factory.mktemp("first") / "weights.safetensors", MODEL)
    exported: list[Path] = []
    real = onnx_cache.export_model

    def counting(w, *args, **kwargs):
        exported.append(w.path)
        return real(w, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_cache, "export_model", counting)
        lines: list[str] = []
        predictor, _, _ = load_predictor(weights, log=lines.append)
    return FirstUse(weights, lines, predictor, exported)


@pytest.fixture
def weights(tmp_path: Path, first_use: FirstUse) -> Path:
    """A copy of the first-use folder (weights, .onnx, record): a valid cache each test may spoil."""
    shutil.copytree(first_use.weights.parent, tmp_path / "run")
    return tmp_path / "run" / first_use.weights.name


@pytest.fixture
def fresh_weights(tmp_path: Path) -> Path:
    return make_weights(tmp_path / "run" / "weights.safetensors", MODEL)


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The weights files exported by onnx_cache in this test, in order (a counter of exports)."""
    calls: list[Path] = []
    real = onnx_cache.export_model

    def counting(weights, *args, **kwargs):
        calls.append(weights.path)
        return real(weights, *args, **kwargs)

    monkeypatch.setattr(onnx_cache, "export_model", counting)
    return calls


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def torch_logits(weights: Path, x: torch.Tensor) -> torch.Tensor:
    """The plain, unfolded float32 network: the reference every backend must match."""
    w = load_weights(weights)
    with torch.inference_mode():
        return w.model(w.stats.apply(x))


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOL * max(1.0, expected.abs().max().item())


def cache_of(weights: Path) -> Path:
    return weights.with_name(weights.name + ".onnx")


def scale_first_weight(path: Path, factor: float) -> None:
    """Rewrite an ONNX file with its first conv weight scaled: a graph that still loads and runs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = next(t for t in model.graph.initializer if len(t.dims) == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(path))


def test_default_is_onnxruntime_matching_torch_and_reused_without_export(
    first_use: FirstUse, exports: list[Path]
) -> None:
    weights, lines, predictor = first_use.weights, first_use.lines, first_use.predictor
    assert isinstance(predictor, OnnxPredictor) and predictor.describe()["backend"] == "onnxruntime"
    cache = cache_of(weights)
    assert predictor.path == cache and cache.with_name(cache.name + ".json").is_file()
    assert first_use.exported == [weights] and predictor.cache.built and predictor.cache.reason == "first use"
    assert lines[0].startswith("exporting the weights to ONNX once (first use)")
    assert lines[-1].startswith(f"backend onnxruntime (auto: faster than PyTorch on CPU): {cache}")
    assert sum(line.startswith("backend ") for line in lines) == 1

    reference, ref_meta, ref_params = load_predictor(weights, backend="torch", precision="fp32")
    assert isinstance(reference, FastPredictor)
    x = images()
    assert_close(predictor(x), torch_logits(weights, x))
    assert_close(predictor(x[:1]), torch_logits(weights, x[:1]))  # one file, any batch size
    # numpy normalises for onnxruntime (off torch's thread pool): the input of NormStats.apply, bit for bit
    assert np.array_equal(predictor.normalise(x), predictor.stats.apply(x).numpy())

    stamp = (cache.stat().st_mtime_ns, cache.stat().st_ino)
    again, meta, params = load_predictor(weights, log=lines.append)
    assert exports == [] and not again.cache.built  # no second export
    assert (cache.stat().st_mtime_ns, cache.stat().st_ino) == stamp
    assert "reused, checksums match" in lines[-1]
    assert (meta, params) == (ref_meta, ref_params)
    assert_close(again(x), torch_logits(weights, x))


def test_a_changed_or_damaged_onnx_file_is_rebuilt_not_trusted(weights: Path, exports: list[Path]) -> None:
    cache, x = cache_of(weights), images()
    record, digest = cache.with_name(cache.name + ".json"), onnx_cache.file_sha256(weights)
    assert onnx_cache.untrusted_because(cache, digest, TOL) is None  # the copied cache is valid
    scale_first_weight(cache, 3.0)  # tampered, yet a valid graph with the reslab metadata
    tampered = OnnxPredictor(cache)(x)
    assert not torch.allclose(tampered, torch_logits(weights, x), atol=1e-2)  # it would give wrong answers

    predictor, _, _ = load_predictor(weights)
    assert exports == [weights] and predictor.cache.built and "checksum" in predictor.cache.reason
    assert_close(predictor(x), torch_logits(weights, x))
    assert onnx_cache.untrusted_because(cache, digest, TOL) is None

    good = cache.read_bytes()
    cache.write_bytes(good[:1000])  # truncated
    assert "checksum" in onnx_cache.untrusted_because(cache, digest, TOL)
    cache.write_bytes(good)
    record.write_text(record.read_text()[:-20])  # the record (checksums) damaged
    assert "record" in onnx_cache.untrusted_because(cache, digest, TOL)
    record.unlink()
    assert "record" in onnx_cache.untrusted_because(cache, digest, TOL)


def test_changed_weights_rebuild_the_export(weights: Path, exports: list[Path]) -> None:
    x = images()
    before = torch_logits(weights, x)
    w = load_weights(weights)
    with torch.no_grad():
        w.model.fc.weight.mul_(-1)  # other weights, same file name
    save_weights(weights, w.model, w.meta, w.stats)

    predictor, _, _ = load_predictor(weights)
    assert exports == [weights] and predictor.cache.reason == "weights changed since the export"
    after = predictor(x)
    assert_close(after, torch_logits(weights, x))
    assert not torch.allclose(after, before, atol=1e-2)


def test_an_export_failing_verification_falls_back_to_torch_with_one_warning(
    fresh_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = fresh_weights
    real = export_module._onnx_export

    def wrong_exporter(net, example, out):  # an exporter bug: the written graph computes something else
        exporter = real(net, example, out)
        scale_first_weight(out, 1.01)
        return exporter

    monkeypatch.setattr(export_module, "_onnx_export", wrong_exporter)
    lines: list[str] = []
    predictor, _, _ = load_predictor(weights, precision="fp32", log=lines.append)
    assert isinstance(predictor, FastPredictor)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 1 and "does not match PyTorch" in warnings[0] and "running PyTorch instead" in warnings[0]
    assert lines[-1].startswith("backend torch (auto: fallback")
    assert not cache_of(weights).exists()  # nothing unverified is left to be picked up later
    x = images()
    assert_close(predictor(x), torch_logits(weights, x))

    with pytest.raises(ExportError, match="does not match PyTorch"):  # asked for explicitly: an error
        load_predictor(weights, backend="onnxruntime")


def test_backend_option_on_the_command_line(weights: Path, corpus: Path, capsys: pytest.CaptureFixture) -> None:
    image = str(corpus / "image.bmp")
    cache_of(weights).rename(cache_of(weights).with_suffix(".aside"))
    assert reslab_main(["predict", str(weights), image, "--backend", "torch", "--precision", "fp32", "--csv"]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == ["reslab predict: backend torch (--backend torch): fp32, BatchNorm folded"]
    assert not cache_of(weights).exists()  # torch neither uses nor makes the export
    torch_rows = out.out.splitlines()[1:]

    cache_of(weights).with_suffix(".aside").rename(cache_of(weights))
    assert reslab_main(["predict", str(weights), image, "--csv"]) == 0
    out = capsys.readouterr()
    (line,) = out.err.splitlines()  # one line: which backend, and that the export was reused
    assert line.startswith(
        f"reslab predict: backend onnxruntime (auto: faster than PyTorch on CPU): {cache_of(weights)} "
        "(reused, checksums match; max |logit diff| vs PyTorch "
    )
    onnx_rows = out.out.splitlines()[1:]
    assert [r.split(",")[:4] for r in onnx_rows] == [r.split(",")[:4] for r in torch_rows]  # same classes, order
    for a, b in zip(onnx_rows, torch_rows):
        assert abs(float(a.split(",")[4]) - float(b.split(",")[4])) < 1e-4

    assert reslab_main(["predict", str(weights), image, "--backend", "onnxruntime", "--no-fold"]) == 2
    assert "--no-fold apply to the PyTorch backend" in capsys.readouterr().err
    assert reslab_main(["predict", str(cache_of(weights)), image, "--backend", "torch"]) == 2
    assert "needs PyTorch weights" in capsys.readouterr().err
    assert choose_backend("auto", ["--compile"]) == ("torch", "auto: --compile asked for")
    assert choose_backend("auto", [])[0] == "onnxruntime"


def test_concurrent_first_use_exports_once(fresh_weights: Path) -> None:
    weights = fresh_weights
    code = "import sys; from reslab.infer.onnx_cache import cached_onnx; print(cached_onnx(sys.argv[1]).built)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(weights)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err.decode()[-2000:] for _, err in results]
    assert sorted(out.decode().strip() for out, _ in results) == ["False", "True"]  # one built, one waited
    assert sorted(p.name for p in weights.parent.iterdir()) == [
        "weights.safetensors",
        "weights.safetensors.onnx",
        "weights.safetensors.onnx.json",
        "weights.safetensors.onnx.lock",
    ]  # no temp files left


def test_shipped_and_unwritable_weights_cache_in_the_user_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    package = tmp_path / "site-packages" / "reslab" / "pretrained"  # stands for PRETRAINED_DIR
    monkeypatch.setattr(onnx_cache, "PRETRAINED_DIR", package)
    shipped = make_weights(package / "tiny.safetensors", MODEL)
    predictor, _, _ = load_predictor(shipped)
    assert predictor.path == tmp_path / "cache" / "onnx" / f"{onnx_cache.file_sha256(shipped)}.onnx"
    assert [p.name for p in package.iterdir()] == ["tiny.safetensors"]  # nothing written into the package

    local = make_weights(tmp_path / "w.safetensors", MODEL)
    link = tmp_path / "link.safetensors"
    link.symlink_to(local)  # as the Hugging Face Hub cache's snapshots are
    assert onnx_cache.cache_path(link, "ab") == tmp_path / "cache" / "onnx" / "ab.onnx"
    assert onnx_cache.cache_path(local, "ab") == tmp_path / "w.safetensors.onnx"
    monkeypatch.setattr(onnx_cache.os, "access", lambda path, mode: False)  # a read-only folder
    assert onnx_cache.cache_path(local, "ab") == tmp_path / "cache" / "onnx" / "ab.onnx"
