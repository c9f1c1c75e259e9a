"""Residual blocks and shortcuts.

The paper's blocks (He et al. 2015, "Deep Residual Learning"): conv -> BN -> ReLU inside the
branch, the addition, then a ReLU after the addition. The pre-activation blocks (He et al. 2016,
"Identity Mappings in Deep Residual Networks") put BN -> ReLU before each conv and nothing after
the addition. Every block takes `residual=False` to become its "plain" twin: the same layers,
no shortcut.

Submodule names follow torchvision (`conv1`, `bn1`, ..., `downsample`) so that state dicts of the
equivalent networks line up key for key.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from reslab.vocab import SHORTCUTS, STRIDE_ON

Shortcut = Literal["A", "B", "C"]
StrideOn = Literal["1x1", "3x3"]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A: identity with stride subsampling and zero-padded extra channels; no parameters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"option A cannot shrink channels ({in_ch} -> {out_ch})")
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))  # (W, W, H, H, C, C) pads; new channels last
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels={self.extra}"


def make_shortcut(kind: Shortcut, in_ch: int, out_ch: int, stride: int, *, norm: bool) -> nn.Module | None:
    """The shortcut of one block; None means the plain identity.

    A: identity, zero-padding where the shape changes. B: 1x1 projection only where the shape
    changes. C: projection on every block. `norm=False` drops the BN after the projection, as in
    the pre-activation nets, whose projection already sees a normalised input.
    """
    if kind not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {kind!r}")
    changes_shape = stride != 1 or in_ch != out_ch
    if kind == "A":
        return PadShortcut(in_ch, out_ch, stride) if changes_shape else None
    if kind == "B" and not changes_shape:
        return None
    conv = conv1x1(in_ch, out_ch, stride)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch)) if norm else nn.Sequential(conv)


class BasicBlock(nn.Module):
    """Two 3x3 convs (paper Fig. 2 left). (B, in_ch, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1
    preact = False

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: Shortcut = "B",
        residual: bool = True,
        groups: int = 1,
        base_width: int = 64,
        stride_on: StrideOn = "3x3",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_ch, planes, stride, norm=True) if residual else None

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4 (paper Fig. 5 right).

    Where the stride sits is a named choice: `stride_on="1x1"` is the paper ("v1"); "3x3" is
    torchvision's "v1.5" (about +0.5% top-1 on ImageNet, a little slower).
    """

    expansion = 4
    preact = False

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: Shortcut = "B",
        residual: bool = True,
        groups: int = 1,
        base_width: int = 64,
        stride_on: StrideOn = "3x3",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if stride_on not in STRIDE_ON:
            raise ValueError(f"stride_on must be one of {STRIDE_ON}, got {stride_on!r}")
        width = int(planes * (base_width / 64.0)) * groups
        out_ch = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_ch, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_ch, out_ch, stride, norm=True) if residual else None

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3 twice (He et al. 2016, Fig. 4e); also the Wide ResNet block.

    A projection shortcut takes the pre-activated input, as in the authors' code; an option-A
    shortcut takes the raw input. `drop_rate` is Wide ResNet's dropout between the convs (off in
    the papers' main results).
    """

    expansion = 1
    preact = True

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: Shortcut = "B",
        residual: bool = True,
        groups: int = 1,
        base_width: int = 64,
        stride_on: StrideOn = "3x3",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("PreActBasicBlock supports only groups=1 and base_width=64")
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_ch, planes, stride, norm=False) if residual else None

    def last_conv(self) -> nn.Conv2d:
        return self.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        if self.residual:
            out = out + _preact_shortcut(self.downsample, x, pre)
        return out


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv for 1x1, 3x3, 1x1 x4 (He et al. 2016); stride on the 3x3 as in their code."""

    expansion = 4
    preact = True

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: Shortcut = "B",
        residual: bool = True,
        groups: int = 1,
        base_width: int = 64,
        stride_on: StrideOn = "3x3",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_ch = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv1x1(in_ch, width, stride_1x1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_ch, out_ch, stride, norm=False) if residual else None

    def last_conv(self) -> nn.Conv2d:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.residual:
            out = out + _preact_shortcut(self.downsample, x, pre)
        return out


def _preact_shortcut(downsample: nn.Module | None, x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    if downsample is None:
        return x
    if isinstance(downsample, PadShortcut):
        return downsample(x)
    return downsample(pre)


Block = type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock] | type[PreActBottleneck]
