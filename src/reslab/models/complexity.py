"""Parameter and multiply-add counts, measured by running the network, not typed in.

Multiply-adds are those of convolutions and the classifier, counted by
`torch.utils.flop_counter.FlopCounterMode` (which reports 2 FLOPs per multiply-add) on the meta
device, so even ResNet-1202 or ResNeXt-101 costs no memory and no arithmetic to count.

Counting all 40 registered networks takes 10-20 s on 2 CPU cores, so `reslab models` reads the
counts of the registered networks (default classes and channels) from model_table.json, written by
`write_model_table()`; tests/models/test_model_table.py measures every network again and fails if
the table is stale. Other names (wrn_22_8) and settings are measured on the spot.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reslab.atomic import atomic_write_bytes
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


MODEL_TABLE = Path(__file__).with_name("model_table.json")


def measure(name: str, num_classes: int | None = None, in_chans: int = 3) -> ModelRow:
    """Build the network on the meta device and count its parameters and multiply-adds."""
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


@cache
def _table() -> dict[str, dict]:
    try:
        return {row["name"]: row for row in json.loads(MODEL_TABLE.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no table (or a damaged one): everything is measured


def describe(name: str, num_classes: int | None = None, in_chans: int = 3) -> ModelRow:
    """The row of `reslab models`: from the table for a registered network as registered, else measured."""
    row = _table().get(name)
    if row is not None and num_classes is None and in_chans == 3:
        return ModelRow(**row)
    return measure(name, num_classes, in_chans)


def model_table(pattern: str = "*") -> list[dict]:
    return [asdict(describe(name)) for name in list_models(pattern)]


def write_model_table(path: Path = MODEL_TABLE) -> None:
    """Measure every registered network (default classes, 3 channels) and write the table."""
    rows = [asdict(measure(name)) for name in list_models()]
    atomic_write_bytes(path, (json.dumps(rows, indent=1) + "\n").encode())
