"""Feature pyramids: a network's stage outputs, with timm's `features_only` interface.

`create_model(name, features_only=True, out_indices=(1, 2, 3))` returns a `FeatureNet`, whose
forward pass returns a list with one feature map per requested level, shallowest first, and whose
`feature_info` says for each output its channels, its reduction (input size / map size) and the
module it comes out of, as timm's `model.feature_info` does (dicts with "num_chs", "reduction",
"module", and `.channels()`, `.reduction()`, `.module_name()`).

Levels, for a network of S stages:
  0        the stem: conv1 (+ BN-ReLU in post-activation nets), before the ImageNet max-pool;
           reduction 1 on CIFAR-style nets, 2 on ImageNet nets
  1 .. S   the output of stage i (`layer{i}`); the last one of a pre-activation net goes through
           the net's final BN-ReLU, so level S is exactly what `forward_features` returns

For a 224x224 input, resnet50 gives reductions 2, 4, 8, 16, 32 with 64, 256, 512, 1024, 2048
channels (as timm's resnet50); resnet56 on 32x32 gives 1, 1, 2, 4 with 16, 16, 32, 64.

The `FeatureNet` keeps the backbone's modules under their own names (conv1, bn1, layer1, ...), so
a ResNet state dict loads into it with `strict=False` (the classifier is simply not used), and
stages after the deepest requested level are dropped, as timm does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reslab.errors import ConfigError, InputShapeError
from reslab.models.resnet import ResNet


class FeatureInfo(list):
    """One dict per output: {"num_chs": channels, "reduction": input size / map size, "module": name,
    "index": level}."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def _block_channels(block: nn.Module) -> int:
    """A block's output width (planes x expansion): the out_channels of its last convolution,
    the branch's last conv or the projection shortcut, which both end at that width."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def feature_levels(net: ResNet) -> FeatureInfo:
    """Every level of `net` (see the module docstring), whether requested or not."""
    stem_module = "relu" if isinstance(net.relu, nn.ReLU) else "conv1"  # pre-activation stems end at conv1
    levels = FeatureInfo([{"num_chs": net.conv1.out_channels, "reduction": net.conv1.stride[0], "module": stem_module}])
    for i, stage in enumerate(net.stages, 1):
        last = i == net.num_stages
        levels.append(
            {
                "num_chs": net.num_features if last else _block_channels(stage[-1]),
                # each stage after the first halves the resolution, down to total_stride at the last
                "reduction": net.total_stride // 2 ** (net.num_stages - i),
                "module": "final_bn" if last and net.final_bn is not None else f"layer{i}",
            }
        )
    for index, level in enumerate(levels):
        level["index"] = index
    return levels


def check_out_indices(out_indices: Sequence[int] | None, num_levels: int, name: str) -> tuple[int, ...]:
    """Levels in [0, num_levels) (negative counts from the end), sorted; all of them when None."""
    if out_indices is None:
        return tuple(range(num_levels))
    if isinstance(out_indices, int | str) or not all(type(i) is int for i in out_indices):  # no bools
        raise ConfigError(f"out_indices must be a sequence of integers, got {out_indices!r}")
    chosen = [i + num_levels if i < 0 else i for i in out_indices]
    if not chosen or any(not 0 <= i < num_levels for i in chosen) or len(set(chosen)) != len(chosen):
        raise ConfigError(
            f"out_indices {tuple(out_indices)} for {name}: give distinct levels in 0..{num_levels - 1} "
            f"(0 the stem, 1..{num_levels - 1} the stages; negative counts from the end)"
        )
    return tuple(sorted(chosen))


class FeatureNet(nn.Module):
    """A network's stem and stages, returning the feature maps of `out_indices` (a list, shallowest
    first). (B, in_chans, H, W) -> [(B, C_i, H / r_i, W / r_i) for each requested level i]."""

    def __init__(self, net: ResNet, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels = feature_levels(net)
        self.out_indices = check_out_indices(out_indices, len(levels), net.name)
        self.feature_info = FeatureInfo(levels[i] for i in self.out_indices)
        self.name, self.in_chans, self.min_input_size = net.name, net.in_chans, net.min_input_size
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        deepest = max(self.out_indices)
        for i, stage in enumerate(net.stages[:deepest], 1):
            self.add_module(f"layer{i}", stage)
        self.num_stages = deepest
        # The final BN-ReLU belongs to the last stage's output only.
        self.final_bn = net.final_bn if deepest == net.num_stages else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = self.min_input_size
        if x.dim() != 4 or x.shape[1] != self.in_chans or min(x.shape[2:]) < size:
            raise InputShapeError(
                f"{self.name} features expect input of shape (B, {self.in_chans}, H, W) with H, W >= {size}; "
                f"got {tuple(x.shape)}"
            )
        wanted = set(self.out_indices)
        x = self.relu(self.bn1(self.conv1(x)))
        out = [x] if 0 in wanted else []
        x = self.maxpool(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            if i == self.num_stages and self.final_bn is not None:
                x = torch.relu(self.final_bn(x))
            if i in wanted:
                out.append(x)
        return out

    def extra_repr(self) -> str:
        return f"out_indices={self.out_indices}"
