"""The fast path against the plain network, for one member of every registry family.

Stated tolerances (see reslab/infer/fast.py):
  fp32 folded vs unfolded: max |logit diff| <= 1e-4 * max(1, max |logit|)
  bf16 vs fp32: max |logit diff| <= 5e-2 * max(1, max |logit|), and top-1 agrees on every row
  whose fp32 top-1 margin is larger than twice that bound (where a flip would be a bug, not noise).
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from infer_testdata import MEAN, STD, randomize_batchnorm
from torch import nn

from reslab.data.norm import NormStats
from reslab.data.preprocess import Preprocess
from reslab.device import resolve_precision
from reslab.errors import InputShapeError
from reslab.infer.fast import FastPredictor, fold_batchnorm
from reslab.models import create_model, model_info

FP32_TOL = 1e-4
BF16_TOL = 5e-2

# One network per family, (name, options, input size). 32x32 is the smallest input the ImageNet
# nets take (total stride 32) and keeps the suite fast; the arithmetic checked is the same.
FAMILIES = [
    ("resnet20", {}, 32),  # resnet-cifar, option A shortcuts
    ("resnet20", {"shortcut": "C"}, 32),  # projection on every block
    ("plain20", {}, 32),  # plain-cifar
    ("preact_resnet_cifar_8", {}, 32),  # preact-resnet-cifar, basic
    ("preact_resnet_cifar_11", {"bottleneck": True}, 32),  # preact-resnet-cifar, bottleneck
    ("preact_resnet_cifar_8", {"shortcut": "A"}, 32),
    ("wrn_10_2", {}, 32),  # wide-resnet-cifar
    ("fast_resnet10", {}, 28),  # fast-resnet (four stages: 28 -> 4x4 last stage)
    ("resnet18", {}, 32),  # resnet-v1.5, basic
    ("resnet50_v1", {}, 32),  # resnet-v1, bottleneck, stride on the 1x1
    ("preact_resnet18", {}, 32),  # preact-resnet
    ("plain18", {}, 32),  # plain
    ("resnext50_32x4d", {}, 32),  # resnext (grouped conv)
]
COVERED = {model_info(name).family for name, _, _ in FAMILIES}


def pre(mean: torch.Tensor, std: torch.Tensor, size: int = 32) -> Preprocess:
    """The preprocessing of weights normalised by (mean, std)."""
    return Preprocess(mean.shape[0], size, "shorter-center-crop", NormStats(mean, std))


def build(name: str, options: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(create_model(name, num_classes=10, **options), seed)


def reference_logits(model: nn.Module, u8: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model((u8.float() / 255.0 - MEAN) / STD)


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_families_cover_the_registry_except_the_big_twins() -> None:
    from reslab.models import list_models

    families = {model_info(n).family for n in list_models()}
    # resnext-cifar (ResNeXt-29) and wide-resnet (ImageNet WRN-50-2) reuse the grouped and widened
    # Bottleneck covered by resnext50_32x4d / resnet50_v1; they are too heavy for a unit test.
    assert families - COVERED <= {"resnext-cifar", "wide-resnet"}


@pytest.mark.parametrize("name, options, size", FAMILIES, ids=[f"{n}{o or ''}" for n, o, _ in FAMILIES])
def test_fp32_fast_path_matches_the_plain_network(name: str, options: dict, size: int) -> None:
    model = build(name, options)
    probe = model.conv1.weight.clone()
    predictor = FastPredictor(model, pre(MEAN, STD), precision="fp32")

    # Every BN that follows a conv is folded; pre-activation nets keep each block's leading BN
    # and the final BN, which follow an addition and so have no conv to fold into.
    total = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in predictor.model.modules())
    assert left == (sum(len(stage) for stage in model.stages) + 1 if model.preact else 0)
    assert predictor.model.folded_batchnorms == total - left

    u8 = images(3, size)
    expected = reference_logits(model, u8)
    got = predictor(u8)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= FP32_TOL * scale
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # the caller's model is untouched: its BNs and bias-free convs are still there
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == total
    assert model.conv1.bias is None and torch.equal(model.conv1.weight, probe)


def test_fold_batchnorm_in_place_and_copy() -> None:
    model = build("resnet20", {})
    copy = fold_batchnorm(model)
    assert copy is not model and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    same = fold_batchnorm(model, inplace=True)
    assert same is model and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    "name, options, size",
    [FAMILIES[0], FAMILIES[3], FAMILIES[7]],
    ids=["resnet20", "preact_resnet_cifar_8", "resnet18"],
)
def test_bf16_is_close_to_fp32(name: str, options: dict, size: int) -> None:
    model = build(name, options)
    u8 = images(16, size, seed=1)
    fp32 = FastPredictor(model, pre(MEAN, STD), precision="fp32")(u8)
    with pytest.warns(UserWarning) if resolve_precision("auto") == "fp32" else nullcontext():
        bf16 = FastPredictor(model, pre(MEAN, STD), precision="bf16")(u8)
    scale = max(1.0, fp32.abs().max().item())
    diff = (bf16 - fp32).abs().max().item()
    assert 0 < diff <= BF16_TOL * scale  # > 0: bf16 really ran
    top2 = fp32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * BF16_TOL * scale
    assert torch.equal(bf16.argmax(1)[clear], fp32.argmax(1)[clear])


def test_grey_input_and_per_pixel_mean() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("resnet20", num_classes=10, in_chans=1))
    mean, std = torch.rand(1, 32, 32) * 0.2 + 0.4, torch.rand(1, 32, 32) * 0.1 + 0.2
    u8 = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = model((u8 / 255.0 - mean) / std)
    got = FastPredictor(model, pre(mean, std), precision="fp32")(u8)
    assert (got - expected).abs().max().item() <= FP32_TOL * max(1.0, expected.abs().max().item())


def test_wrong_input_is_a_clear_error() -> None:
    predictor = FastPredictor(create_model("resnet20"), pre(MEAN, STD), precision="fp32")
    with pytest.raises(InputShapeError, match="uint8"):
        predictor(torch.zeros(1, 3, 32, 32))
    with pytest.raises(InputShapeError, match=r"\(B, 3, H, W\)"):
        predictor(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))


@pytest.mark.slow
def test_compiled_fast_path_matches() -> None:
    model = build("resnet_cifar_8", {})  # the smallest net: compile time grows with the graph
    predictor = FastPredictor(model, pre(MEAN, STD), precision="fp32", compile=True, dynamic=False)
    u8 = images(4, 32)
    expected = reference_logits(model, u8)
    got = predictor(u8)
    assert (got - expected).abs().max().item() <= FP32_TOL * max(1.0, expected.abs().max().item())
