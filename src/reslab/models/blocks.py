"""Residual blocks and shortcuts.

The paper's blocks (He et al. 2015, "Deep Residual Learning"): conv -> BN -> ReLU inside the
branch, the addition, then a ReLU after the addition. The pre-activation blocks (He et al. 2016,
"Identity Mappings in Deep Residual Networks") put BN -> ReLU before each conv and nothing after
the addition. Every block takes `residual=False` to become its "plain" twin: the same layers,
no shortcut. Every residual block takes `drop_path`, its stochastic-depth probability (Huang et al.
2016, "Deep Networks with Stochastic Depth"): in training, each sample's branch is dropped with that
probability and the kept ones scaled by 1 / (1 - p); at evaluation the block is unchanged.

As in torchvision's `ResNet._make_layer`, a block does not build its shortcut: the network's stage
builder makes it with `make_shortcut` and hands it in as `downsample`, so the shortcut option
(A/B/C) is decided in one place. Submodule names follow torchvision (`conv1`, `bn1`, ...,
`downsample`) so that state dicts of the equivalent networks line up key for key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reslab.errors import ConfigError
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


class DropPath(nn.Module):
    """Stochastic depth: zero the residual branch of each sample with probability p in training and
    scale the kept ones by 1 / (1 - p), so the expected branch is unchanged; the identity in eval.

    The same draws and arithmetic as `torchvision.ops.stochastic_depth(x, p, mode="row")` (one
    Bernoulli per sample), kept here so that models/ does not import torchvision.
    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * noise.bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class ExtraOption(NamedTuple):
    """An option outside the paper's block, which only some blocks implement."""

    neutral: object  # the value that leaves the paper's block unchanged; every block takes it
    where: str  # which blocks implement other values (said in the error)
    fix: str  # what to do instead (said in the error)


EXTRA_OPTIONS: dict[str, ExtraOption] = {
    "groups": ExtraOption(1, "grouped convs are implemented only by bottleneck blocks: resnext*", "leave groups at 1"),
    "base_width": ExtraOption(
        64,
        "other group widths are implemented only by bottleneck blocks: resnext*, wide_resnet*_2",
        "leave base_width at 64",
    ),
    "stride_on": ExtraOption(
        "3x3",
        "a basic block strides its first 3x3 conv; only bottleneck blocks have a 1x1 to stride instead",
        "leave stride_on at '3x3'",
    ),
    "drop_rate": ExtraOption(
        0.0,
        "dropout between convs is implemented only by pre-activation basic blocks: "
        "wrn_*, preact_resnet110, preact_resnet18, preact_resnet34, preact_resnet_cifar_D",
        "leave model.drop_rate at 0",
    ),
}


@dataclass(frozen=True)
class BlockOptions:
    """What every block of one network shares, chosen once for the network and handed to each
    block unchanged (torchvision passes groups, base_width and norm_layer to each block one by one).

    The defaults are the paper's blocks; `ResidualBlock.check_options` refuses a value the block
    cannot honour, naming the block or the model.
    """

    residual: bool = True  # False: the plain twin, the same layers with no shortcut (paper sec. 4.1)
    groups: int = 1  # ResNeXt cardinality: groups of the 3x3 conv (bottlenecks only)
    base_width: int = 64  # channels per group at planes=64; 128 = Wide ResNet-50-2 (bottlenecks only)
    stride_on: StrideOn = "3x3"  # which conv of a bottleneck strides: "1x1" paper (v1), "3x3" torchvision (v1.5)
    drop_rate: float = 0.0  # dropout probability between the convs (pre-activation basic blocks only)


PAPER_BLOCK = BlockOptions()  # the paper's residual block: every option at its neutral value


class ResidualBlock(nn.Module):
    """What every block shares: its declaration (output expansion, pre-activation or not, which
    extra options it implements), the check of those options, the residual switch, the addition
    of the stage-built shortcut, and `zero_init_last`.

    Every block takes the same arguments, so the network builds any of them the same way:
    (in_ch, planes, stride, *, downsample, options, drop_path), with the network-wide choices in
    one `BlockOptions`. `drop_path` (stochastic depth, `DropPath`) is the block's own probability,
    different in each block, and works on every residual block, so it is not an `EXTRA_OPTION`; a
    plain block has no branch to drop and refuses it.
    A subclass builds its branch layers and then assigns `self.downsample` last: module order is
    the order `ResNet._init_weights` draws the initial weights in, and torchvision's state-dict order.
    """

    expansion: ClassVar[int] = 1  # output channels = planes * expansion
    preact: ClassVar[bool] = False  # BN-ReLU before each conv (He et al. 2016); selects the whole net's layout
    supports: ClassVar[frozenset[str]] = frozenset()  # the EXTRA_OPTIONS it implements beyond their neutral value

    residual: bool  # False: the plain twin, no addition
    downsample: nn.Module | None  # the shortcut the stage built; None = identity (or none, if plain)

    def __init__(self, options: BlockOptions, drop_path: float = 0.0) -> None:
        super().__init__()
        # The network checks first, naming the model; this catches a block built on its own.
        self.check_options(type(self).__name__, options)
        if not isinstance(drop_path, int | float) or not 0 <= drop_path < 1:
            raise ConfigError(f"{type(self).__name__}: drop_path is a probability in [0, 1), got {drop_path!r}")
        if drop_path and not options.residual:
            raise ConfigError(f"{type(self).__name__}: a plain block has no residual branch to drop (drop_path)")
        self.residual = options.residual
        # Applied to the branch before the addition; a module without parameters or buffers, so the
        # state dict is the same with or without it.
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @classmethod
    def check_options(cls, owner: str, options: BlockOptions) -> None:
        """Raise `ConfigError` naming `owner` and the option for a value this block cannot honour:
        an option it does not implement is an error, never silently ignored."""
        if options.stride_on not in STRIDE_ON:
            raise ConfigError(f"{owner}: stride_on must be one of {STRIDE_ON}, got {options.stride_on!r}")
        drop_rate = options.drop_rate
        if not isinstance(drop_rate, int | float) or not 0 <= drop_rate < 1:
            raise ConfigError(f"{owner}: drop_rate is a dropout probability in [0, 1), got {drop_rate!r}")
        for option, extra in EXTRA_OPTIONS.items():
            value = getattr(options, option)
            if value != extra.neutral and option not in cls.supports:
                raise ConfigError(f"{owner} does not support {option} ({extra.where}); {extra.fix}")

    def shortcut(self, x: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor:
        """What the addition adds to the branch: x itself, or the stage-built shortcut of it.

        `pre` is a pre-activation block's BN-ReLU'd input: its projection takes that, as in the
        authors' code, while option A's zero-padded identity takes the raw input.
        """
        if self.downsample is None:
            return x
        if pre is None or isinstance(self.downsample, PadShortcut):
            return self.downsample(x)
        return self.downsample(pre)

    def zero_init_last(self) -> None:
        """Zero the branch's last scaling layer so a residual block starts as its shortcut
        (Goyal et al. 2017); called by `ResNet._init_weights` after the paper's init."""
        raise NotImplementedError


class BasicBlock(ResidualBlock):
    """Two 3x3 convs (paper Fig. 2 left). (B, in_ch, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1
    preact = False

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        *,
        downsample: nn.Module | None = None,
        options: BlockOptions = PAPER_BLOCK,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(options, drop_path)
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = self.drop_path(out)
            out += self.shortcut(x)
        return self.relu(out)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4 (paper Fig. 5 right).

    Where the stride sits is a named choice: `stride_on="1x1"` is the paper ("v1"); "3x3" is
    torchvision's "v1.5" (about +0.5% top-1 on ImageNet, a little slower).
    """

    expansion = 4
    preact = False
    supports = frozenset({"groups", "base_width", "stride_on"})

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        *,
        downsample: nn.Module | None = None,
        options: BlockOptions = PAPER_BLOCK,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(options, drop_path)
        width = int(planes * (options.base_width / 64.0)) * options.groups
        out_ch = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if options.stride_on == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_ch, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, options.groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = self.drop_path(out)
            out += self.shortcut(x)
        return self.relu(out)


class PreActBasicBlock(ResidualBlock):
    """BN-ReLU-conv3x3 twice (He et al. 2016, Fig. 4e); also the Wide ResNet block.

    A projection shortcut takes the pre-activated input, as in the authors' code; an option-A
    shortcut takes the raw input. `drop_rate` is Wide ResNet's dropout between the convs (off in
    the papers' main results).
    """

    expansion = 1
    preact = True
    supports = frozenset({"drop_rate"})

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        *,
        downsample: nn.Module | None = None,
        options: BlockOptions = PAPER_BLOCK,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(options, drop_path)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(options.drop_rate) if options.drop_rate > 0 else nn.Identity()
        self.downsample = downsample

    def zero_init_last(self) -> None:
        # No BN follows the last conv in a pre-activation branch, so the conv itself is zeroed.
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        if self.residual:
            out = self.drop_path(out) + self.shortcut(x, pre)
        return out


class PreActBottleneck(ResidualBlock):
    """BN-ReLU-conv for 1x1, 3x3, 1x1 x4 (He et al. 2016); stride on the 3x3 as in their code."""

    expansion = 4
    preact = True
    supports = frozenset({"groups", "base_width", "stride_on"})

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        *,
        downsample: nn.Module | None = None,
        options: BlockOptions = PAPER_BLOCK,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(options, drop_path)
        width = int(planes * (options.base_width / 64.0)) * options.groups
        out_ch = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if options.stride_on == "1x1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv1x1(in_ch, width, stride_1x1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3, options.groups)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        # No BN follows the last conv in a pre-activation branch, so the conv itself is zeroed.
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.residual:
            out = self.drop_path(out) + self.shortcut(x, pre)
        return out
