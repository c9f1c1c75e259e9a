"""train.precision=auto (reslab.device.resolve_precision): this machine's answer, both answers of
each branch with the hardware flags mocked, the trainer's gradient scaler for fp16, and on a CUDA
machine the real GPU's answer and an fp16 run with its scaler (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reslab import device
from reslab.config import load_config
from reslab.rundir import RunDir
from reslab.train.distributed import Dist
from reslab.train.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SETTINGS = ["data.dataset=synthetic", "data.synthetic_size=32", "data.split=full", "model.name=resnet_cifar_8",
            "train.batch_size=8", "train.iterations=2", "train.progress=false", "train.precision=auto"]  # fmt: skip


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is not there)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return set()
    return {flag for line in path.read_text().splitlines() if line.startswith("flags") for flag in line.split()}


def test_this_cpu_gets_what_its_flags_say() -> None:
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    native = "avx512_bf16" in flags or "amx_tile" in flags
    assert device.native_bf16_supported() == native
    assert device.resolve_precision("auto", CPU) == ("bf16" if native else "fp32")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_cpu_branch_both_ways(monkeypatch, native: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert device.resolve_precision("auto", CPU) == expected
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)  # AMX alone counts too
    assert device.resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_cuda_branch_both_ways(monkeypatch, bf16: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert device.resolve_precision("auto", CUDA) == expected
    for fixed in ("fp32", "bf16", "fp16"):  # a precision asked for by name is kept on any device
        assert device.resolve_precision(fixed, CUDA) == fixed == device.resolve_precision(fixed, CPU)


@pytest.mark.parametrize(("resolved", "scaled"), [("fp16", True), ("bf16", False), ("fp32", False)])
def test_the_trainer_scales_gradients_for_fp16_only(tmp_path: Path, monkeypatch, resolved: str, scaled: bool) -> None:
    """What auto resolves to decides the gradient scaler (an older GPU's fp16); here on the CPU,
    whose autocast takes fp16 too, with the resolution mocked."""
    from reslab.train import trainer as trainer_module

    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(trainer_module, "resolve_precision", lambda precision, dev: resolved)
    (tmp_path / "run").mkdir()
    trainer = Trainer(load_config(None, SETTINGS), RunDir(tmp_path / "run"), Dist(), CPU, resume=False)
    assert trainer.precision == trainer.settings.precision == resolved
    assert (trainer.scaler is not None) == scaled


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_this_gpu_gets_bf16_if_it_has_it_else_fp16() -> None:
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert device.resolve_precision("auto", torch.device("cuda", 0)) == expected


@needs_cuda
@pytest.mark.parametrize("bf16", [True, False])
def test_a_gpu_run_trains_in_what_auto_picks(tmp_path: Path, monkeypatch, bf16: bool) -> None:
    """Two steps on the GPU: bf16 autocast without a scaler where bf16 is supported; fp16 with a
    scaler that has scaled the loss where it is not (mocked on a bf16 GPU)."""
    if bf16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    if not bf16:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    (tmp_path / "run").mkdir()
    trainer = Trainer(
        load_config(None, SETTINGS), RunDir(tmp_path / "run"), Dist(), torch.device("cuda", 0), resume=False
    )
    assert trainer.precision == ("bf16" if bf16 else "fp16")
    assert (trainer.scaler is not None) == (not bf16)
    summary = trainer.fit()
    assert summary["steps"] == 2
    if not bf16:
        assert trainer.scaler.get_scale() > 0 and trainer.scaler._scale is not None
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
