"""One `ResNet` class for the whole family: CIFAR and ImageNet stems, basic and bottleneck blocks,
post- and pre-activation, plain twins, grouped (ResNeXt) and widened (Wide ResNet) variants.

Every network exposes the same small interface, so one trainer, evaluator and exporter serve all:
`forward_features(x) -> (B, C, h, w)`, `forward_head(features, pre_logits=False) -> (B, classes)`,
`reset_classifier(num_classes)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from reslab.errors import ConfigError, InputShapeError
from reslab.models.blocks import BlockOptions, ResidualBlock, Shortcut, StrideOn, make_shortcut

Stem = Literal["cifar", "imagenet"]


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Recomputation under activation checkpointing must not update BN running stats a second
    time: momentum 0 leaves them exactly as the first forward pass set them."""
    norms = [
        (m, m.momentum, m.num_batches_tracked.clone())
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    for m, _, _ in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in norms:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def drop_path_rates(num_blocks: int, rate: float) -> list[float]:
    """Stochastic depth's linear rule over the whole network: block i (0-based, of L) drops its
    branch with probability rate * i / (L - 1), from 0 at the first block to `rate` at the last.

    This is timm's convention (`timm.models.resnet`, "stochastic depth linear decay rule");
    Huang et al. 2016 count blocks from 1 (rate * l / L, the first block already dropping) and
    torchvision's ConvNeXt/EfficientNet use rate * i / L (the last block below `rate`).
    """
    if num_blocks == 1:
        return [rate]
    return [rate * i / (num_blocks - 1) for i in range(num_blocks)]


def make_stage(
    block: type[ResidualBlock],
    in_ch: int,
    planes: int,
    n_blocks: int,
    stride: int,
    *,
    shortcut: Shortcut,
    options: BlockOptions,
    drop_path: Sequence[float] = (),
) -> nn.Sequential:
    """One stage: `n_blocks` blocks of width `planes`, the first with `stride`; `drop_path` holds
    each block's stochastic-depth probability (empty: none).

    As torchvision's `_make_layer`, the stage builds each block's shortcut and hands it in, so the
    A/B/C choice lives here alone: with A or B only a block that changes shape gets a module, with
    C every block does; a plain stage (options.residual False) gets none.
    (B, in_ch, H, W) -> (B, planes * block.expansion, H / stride, W / stride).
    """
    blocks = []
    rates = list(drop_path) or [0.0] * n_blocks
    for j in range(n_blocks):
        block_stride = stride if j == 0 else 1
        out_ch = planes * block.expansion
        # A pre-activation projection sees an input the block has already normalised: no BN after it.
        downsample = (
            make_shortcut(shortcut, in_ch, out_ch, block_stride, norm=not block.preact) if options.residual else None
        )
        blocks.append(block(in_ch, planes, block_stride, downsample=downsample, options=options, drop_path=rates[j]))
        in_ch = out_ch
    return nn.Sequential(*blocks)


@dataclass(frozen=True)
class ResNetSpec:
    """A network's architecture: everything but its classifier size, input channels and name.

    The registry fills one per name (`create_model` adds the user's options); `ResNet` builds it.
    The block-level fields (residual, stride_on, groups, base_width, drop_rate) reach every block
    as one `BlockOptions`; an option the block does not implement raises `ConfigError` naming the
    model and the option (`check`).
    """

    # The block class; its `preact` flag selects pre-activation ordering for the whole net, its
    # `supports` which of groups, base_width, stride_on, drop_rate may leave their defaults.
    block: type[ResidualBlock]
    layers: tuple[int, ...]  # blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50 or (n, n, n) on CIFAR
    planes: tuple[int, ...]  # base width of each stage (output width = planes * block.expansion)
    stem: Stem  # "cifar" = conv3x3 stride 1 (paper sec. 4.2); "imagenet" = conv7x7/2 + maxpool3x3/2
    stem_width: int  # channels out of the stem conv (16 on CIFAR, 64 on ImageNet and ResNeXt-29)
    shortcut: Shortcut = "B"  # "A" zero-pad identity, "B" project where shape changes, "C" project always
    residual: bool = True  # False builds the plain twin (same layers, no shortcuts; paper sec. 4.1)
    stride_on: StrideOn = "3x3"  # where a bottleneck downsamples: "1x1" paper (v1), "3x3" torchvision (v1.5)
    groups: int = 1  # ResNeXt cardinality
    base_width: int = 64  # ResNeXt group width; 128 = Wide ResNet-50-2
    # Zero the last BN of each branch (last conv for pre-activation blocks), so each block starts
    # as identity (Goyal et al. 2017). Off by default: not in the paper.
    zero_init_last: bool = False
    drop_rate: float = 0.0  # dropout between the convs of pre-activation basic blocks (Wide ResNet option)
    # Stochastic depth (Huang et al. 2016): the last block's probability of dropping its residual
    # branch per sample in training, the others' by the linear rule (`drop_path_rates`). Any
    # residual net; a plain net refuses it.
    drop_path_rate: float = 0.0

    @property
    def block_options(self) -> BlockOptions:
        """What every block of this network shares."""
        return BlockOptions(
            residual=self.residual,
            groups=self.groups,
            base_width=self.base_width,
            stride_on=self.stride_on,
            drop_rate=self.drop_rate,
        )

    def check(self, name: str) -> None:
        """ConfigError for options the net `name` cannot honour (before any layer is built)."""
        if len(self.layers) != len(self.planes):
            raise ValueError(f"layers {tuple(self.layers)} and planes {tuple(self.planes)} differ in length")
        self.block.check_options(f"model {name}", self.block_options)
        rate = self.drop_path_rate
        if not isinstance(rate, int | float) or not 0 <= rate < 1:
            raise ConfigError(f"model {name}: drop_path_rate is a probability in [0, 1), got {rate!r}")
        if rate and not self.residual:
            raise ConfigError(
                f"model {name} is a plain net: stochastic depth drops residual branches, and a plain block "
                "has only its branch; leave model.drop_path_rate at 0"
            )
        if self.zero_init_last and not self.residual:
            raise ConfigError(
                f"model {name} is a plain net: zero_init_last would zero the only path through each block "
                "(it makes residual blocks start as identity); leave model.zero_init_last off"
            )

    def make_stages(self) -> list[nn.Sequential]:
        """The stages: the first keeps the stem's resolution, each later one halves it in its first
        block; stochastic depth's rates run over the whole network (`drop_path_rates`)."""
        total = sum(self.layers)
        rates = drop_path_rates(total, self.drop_path_rate) if self.drop_path_rate else [0.0] * total
        in_ch, first, stages = self.stem_width, 0, []
        for i, (n_blocks, width) in enumerate(zip(self.layers, self.planes, strict=True)):
            stage = make_stage(
                self.block,
                in_ch,
                width,
                n_blocks,
                stride=1 if i == 0 else 2,
                shortcut=self.shortcut,
                options=self.block_options,
                drop_path=rates[first : first + n_blocks],
            )
            stages.append(stage)
            in_ch, first = width * self.block.expansion, first + n_blocks
        return stages

    @property
    def num_features(self) -> int:
        """Channels out of the last stage (out of the stem if there is none)."""
        return self.planes[-1] * self.block.expansion if self.planes else self.stem_width


class ResNet(nn.Module):
    """A residual (or plain) network built from a `ResNetSpec`.

    num_classes: classifier outputs; 0 leaves the head as identity (features only).
    in_chans: input channels (3 RGB, 1 grey).
    name: the registry name, used in error messages (`create_model` passes it).
    """

    def __init__(self, spec: ResNetSpec, *, num_classes: int = 1000, in_chans: int = 3, name: str = "resnet") -> None:
        super().__init__()
        # Before any layer is built: the error names the model as the user typed it.
        spec.check(name)
        self.name = name
        self.in_chans = in_chans
        self.preact = spec.block.preact

        # Stem. Pre-activation nets leave BN-ReLU to the first block (He et al. 2016 code).
        self.conv1 = (
            nn.Conv2d(in_chans, spec.stem_width, 3, stride=1, padding=1, bias=False)
            if spec.stem == "cifar"
            else nn.Conv2d(in_chans, spec.stem_width, 7, stride=2, padding=3, bias=False)
        )
        self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(spec.stem_width)
        self.relu = nn.Identity() if self.preact else nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if spec.stem == "imagenet" else nn.Identity()

        stages = spec.make_stages()
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(stages)
        in_ch = spec.num_features
        # A pre-activation net ends with BN-ReLU, since no block normalises its own output.
        self.final_bn = nn.BatchNorm2d(in_ch) if self.preact else None
        self.num_features = in_ch
        self.total_stride = (4 if spec.stem == "imagenet" else 1) * 2 ** (len(stages) - 1)

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self._init_weights(spec.zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        # Paper sec. 3.4: "initialize the weights as in [13]" = Kaiming normal, fan_out for convs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                # A plain block has no shortcut to start as: zeroing its branch would cut the signal.
                if isinstance(m, ResidualBlock) and m.residual:
                    m.zero_init_last()

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    @property
    def min_input_size(self) -> int:
        """Smallest H, W for which the last stage sees at least one pixel that is not padding."""
        return self.total_stride

    def check_input(self, x: torch.Tensor) -> None:
        """Raise `InputShapeError` naming the expected shape unless x is (B, in_chans, H, W)."""
        size = self.min_input_size
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[2] < size or x.shape[3] < size:
            raise InputShapeError(
                f"{self.name} expects input of shape (B, {self.in_chans}, H, W) with H, W >= {size}; "
                f"got {tuple(x.shape)}"
                + (
                    " (wrong channel count: rebuild with in_chans=...)"
                    if x.dim() == 4 and x.shape[1] != self.in_chans
                    else ""
                )
            )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (training only):
        memory falls to about one tensor per block, at roughly one more forward pass of compute."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H / total_stride, W / total_stride)."""
        self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                for block in stage:
                    x = checkpoint(
                        block,
                        x,
                        use_reentrant=False,
                        context_fn=lambda b=block: (contextlib.nullcontext(), _frozen_bn_stats(b)),
                    )
            else:
                x = stage(x)
        if self.final_bn is not None:
            x = torch.relu(self.final_bn(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, C) pooled features, or (B, num_classes) logits."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (num_classes=0: no classifier)."""
        device = next(self.parameters()).device
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
