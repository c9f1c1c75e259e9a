"""Parameter and multiply-add counts, measured by running the network, not typed in.

Multiply-adds are those of convolutions and the classifier, counted by
`torch.utils.flop_counter.FlopCounterMode` (which reports 2 FLOPs per multiply-add) on the meta
device, so even ResNet-1202 or ResNeXt-101 costs no memory and no arithmetic to count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reslab.models.registry import create_model, list_models, model_info


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of one (1, in_chans, input_size, input_size) forward pass in eval mode."""
    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, input_size, input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class ModelRow:
    name: str
    family: str
    depth: int
    params: int
    macs: int  # multiply-adds at input_size x input_size
    input_size: int
    paper: str


def describe(name: str, num_classes: int | None = None, in_chans: int = 3) -> ModelRow:
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    return ModelRow(
        name,
        info.family,
        info.depth,
        count_params(model),
        count_macs(model, info.input_size, in_chans),
        info.input_size,
        info.paper,
    )


def model_table(pattern: str = "*") -> list[dict]:
    return [asdict(describe(name)) for name in list_models(pattern)]
