"""The fast inference path: fold BatchNorm into convolutions, channels_last, bf16, torch.compile.

`FastPredictor` takes what a user holds after decoding, a uint8 batch (B, C, H, W), and returns
float32 logits (B, num_classes). It normalises (x = (pixel/255 - mean) / std) and runs a copy of
the network prepared for inference; the caller's model is never modified.

Numerical contract (checked in tests/infer/test_fast.py for one network of every family):
  - fp32, folded vs the plain eval-mode network: max |logit diff| <= 1e-4 * max(1, max |logit|).
    Folding only reorders float32 arithmetic, so the difference is rounding (~1e-6 relative).
  - bf16 autocast: ~3 significant digits per layer. Measured on random-init nets with random BN
    statistics: max |logit diff| 0.4-0.7% of the logit scale, top-1 unchanged on 16/16 inputs.
    The test bound is 5% of max(1, max |logit|), and top-1 must agree on every input whose fp32
    top-1 margin exceeds twice that bound (a flip there would be a bug, not rounding).
  - torch.compile (fp32): same bound as folding; measured ~2e-6 relative.

bf16 is only fast on CPUs with native bf16 instructions (AVX512-BF16 or AMX). Elsewhere oneDNN
emulates it: on the AVX2-only EPYC this was written on, ResNet-50 at batch 16 took ~21 s in bf16
against ~5 s in fp32. So `precision="auto"` picks bf16 only where
`torch.cpu._is_avx512_bf16_supported()` (or AMX) says so, and fp32 otherwise.

Measured on that AVX2 machine (2 cores), fp32: the folded channels_last network spends ~93% of
its time in oneDNN convolutions at 110-150 GFLOP/s for most layers (the GEMM peak is ~154), so
fp32 cannot get much faster there; what remains is (1) the 7x7 stem on 3 channels and the
64 -> 256 1x1 convs at 56x56 (~45-60 GFLOP/s), and (2) page faults on fresh activation buffers:
glibc mmaps every block over 32 MB and a new 51 MB buffer costs ~22 ms in first-touch faults.
Setting THP_MEM_ALLOC_ENABLE=1 in the environment before Python starts (PyTorch then backs
large tensors with transparent huge pages) cuts that cost ~4x; it is a process-wide setting,
so reslab leaves it to the user. Winograd (NNPACK) helped only the 56x56 3x3 layers (~1.25x).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from reslab.data.preprocess import Preprocess
from reslab.device import CPU, autocast, native_bf16_supported, resolve_precision
from reslab.errors import ConfigError, InputShapeError
from reslab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from reslab.models.resnet import ResNet
from reslab.vocab import INFER_PRECISIONS

# (conv, bn) attribute pairs in which the BN directly follows the conv, per block type.
# Post-activation blocks: conv -> BN in every branch layer. Pre-activation blocks: the BN that
# opens the *next* layer follows a conv directly (conv1 -> bn2 -> relu -> conv2 ...), so it folds
# into that conv; each block's bn1 (and the net's final_bn) follows an addition, not a conv, and
# cannot move across the ReLU after it, so it stays an eval-mode BatchNorm (a per-channel affine).
FOLD_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    PreActBasicBlock: (("conv1", "bn2"),),
    PreActBottleneck: (("conv1", "bn2"), ("conv2", "bn3")),
}


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Make `conv` (modified in place, gaining a bias) compute bn(conv(x)) in eval mode.

    bn(y) = (y - mu) * g / sqrt(var + eps) + b  =>  W' = W * s,  b' = (b_conv - mu) * s + b,
    with s = g / sqrt(var + eps) per output channel, computed in float64 and applied to W in its
    own dtype (one rounding per weight).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    dtype = conv.weight.dtype
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    conv.weight = nn.Parameter(conv.weight * scale.to(dtype).view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(shift.to(dtype), requires_grad=False)
    return conv


def _fold_pair(owner: nn.Module, conv_name: str, bn_name: str) -> int:
    conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
        return 0
    fold_conv_bn(conv, bn)
    setattr(owner, bn_name, nn.Identity())
    return 1


def fold_batchnorm(model: ResNet, *, inplace: bool = False) -> ResNet:
    """Fold every BatchNorm that directly follows a conv into that conv (eval-mode semantics).

    Covers the stem (conv1 -> bn1), each block's branch (see FOLD_PAIRS) and the projection
    shortcuts Sequential(conv, bn). Pre-activation nets keep each block's leading bn1 and the
    final_bn as eval-mode BatchNorms: they follow an addition and precede a ReLU, so there is no
    conv to fold them into. Blocks of other types are left untouched (correct, just not faster).
    The result is in eval mode; the folded network must not be trained (its BNs are gone).
    """
    if model.training and inplace:
        warnings.warn("fold_batchnorm: folding a model in training mode; using its running statistics", stacklevel=2)
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    folded = sum(_fold_pair(m, "conv1", "bn1") for m in net.modules() if isinstance(m, ResNet))  # stems
    for module in net.modules():
        for conv_name, bn_name in FOLD_PAIRS.get(type(module), ()):
            folded += _fold_pair(module, conv_name, bn_name)
        shortcut = getattr(module, "downsample", None)
        if isinstance(shortcut, nn.Sequential) and len(shortcut) == 2:
            folded += _fold_pair(shortcut, "0", "1")
    net.folded_batchnorms = folded  # type: ignore[attr-defined]  # how many pairs, for reports
    return net


class FastPredictor:
    """uint8 images (B, C, H, W) -> float32 logits (B, num_classes), as fast as this CPU allows.

    Args:
        model: a reslab network; copied, never modified.
        preprocess: the weights' `Preprocess` (its `NormStats` normalise the uint8 input).
        fold: fold conv -> BN pairs (float32 rounding-level change, see module docstring).
        channels_last: NHWC memory layout, which oneDNN convolutions prefer on CPU.
        precision: "fp32", "bf16" (autocast) or "auto" (bf16 only with native CPU support).
        compile: torch.compile with Inductor weight freezing; the first call of each new input
            shape compiles (about a minute for ResNet-50 on 2 cores), later calls are fast.
        dynamic: passed to torch.compile (None: recompile once with a dynamic batch dimension
            when a second batch size appears; False: one graph per batch size).
        tta_flip: average each image's logits with its mirror's (as evaluation with flip TTA).
    """

    def __init__(
        self,
        model: ResNet,
        preprocess: Preprocess,
        *,
        fold: bool = True,
        channels_last: bool = True,
        precision: str = "auto",
        compile: bool = False,
        dynamic: bool | None = None,
        tta_flip: bool = False,
    ) -> None:
        if precision not in INFER_PRECISIONS:
            raise ConfigError(f"precision must be one of {INFER_PRECISIONS}, got {precision!r}")
        self.precision = resolve_precision(precision, CPU)
        if self.precision == "bf16" and not native_bf16_supported():
            warnings.warn(
                "bf16 requested but this CPU has no native bf16 support; it will be emulated "
                "and likely slower than fp32 (use --precision auto or fp32)",
                stacklevel=2,
            )
        net = copy.deepcopy(model).float().eval()
        if fold:
            net = fold_batchnorm(net, inplace=True)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        for p in net.parameters():
            p.requires_grad_(False)
        self.model = net
        self.in_chans = model.in_chans
        self.channels_last = channels_last
        self.fold = fold
        self.compiled = compile
        if preprocess.in_chans != model.in_chans:
            raise InputShapeError(
                f"the preprocessing gives {preprocess.in_chans} channels, the network takes {model.in_chans}"
            )
        self.preprocess = preprocess
        self.stats = preprocess.stats.to("cpu")
        self.tta_flip = tta_flip
        self._forward = net
        if compile:
            # Freezing turns weights into constants, which lets Inductor pre-pack them for oneDNN
            # and fuse conv + bias + add + ReLU; it applies only to inference (no-grad) graphs.
            self._forward = torch.compile(net, dynamic=dynamic, options={"freezing": True})

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 -> float32 normalised, in the predictor's memory layout."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.in_chans:
            raise InputShapeError(
                f"expected a uint8 batch (B, {self.in_chans}, H, W); got {images.dtype} {tuple(images.shape)}"
            )
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.stats.apply(images)  # the one uint8 -> float affine (reslab.data.norm); keeps the layout

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(CPU, self.precision):
            return self._forward(x).float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = self.normalise(images)
            logits = self._logits(x)
            if self.tta_flip:  # the mirrored normalised input, as evaluation flips it
                logits = (logits + self._logits(torch.flip(x, dims=[3]))) / 2
            return logits

    def describe(self) -> dict[str, object]:
        return {
            "backend": "pytorch",
            "fold": self.fold,
            "folded_batchnorms": getattr(self.model, "folded_batchnorms", 0),
            "channels_last": self.channels_last,
            "precision": self.precision,
            "tta_flip": self.tta_flip,
            "compile": self.compiled,
            "threads": torch.get_num_threads(),
        }
