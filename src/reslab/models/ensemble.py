"""Several networks of one architecture used as one: the K folds of `reslab train --folds K --ensemble`.

`Ensemble(x)` returns the logarithm of the members' mean probabilities,

    log( (1/K) * sum_k softmax(member_k(x_k) / T_k) )

so whoever applies a softmax to its output (eval, predict, serve, exported files) gets exactly
the mean of the members' probabilities, each member calibrated by its own temperature T_k. The
input is normalised once, with the first member's statistics (the weights file's, so the shared
preprocessing stays one); member k's own normalisation is recovered by an affine map
(x * std_1 + mean_1 - mean_k) / std_k, exact up to float rounding. Its cost is K networks' per
image.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reslab.models.resnet import ResNet


class Ensemble(nn.Module):
    """`members` (same input and classes) as one network; see the module docstring."""

    def __init__(
        self, members: list[ResNet], stats: list[tuple[torch.Tensor, torch.Tensor]], temperatures: list[float]
    ) -> None:
        """`stats`: each member's input normalisation (mean, std) in units of pixel/255."""
        super().__init__()
        if len(members) < 2 or not len(members) == len(stats) == len(temperatures):
            raise ValueError("an ensemble needs at least two members, each with its stats and temperature")
        self.members = nn.ModuleList(members)
        mean0, std0 = stats[0]
        for k, (mean, std) in enumerate(stats):  # x_k = x * scale_k + shift_k
            self.register_buffer(f"scale{k}", (std0 / std).float(), persistent=False)
            self.register_buffer(f"shift{k}", ((mean0 - mean) / std).float(), persistent=False)
        self.register_buffer("inv_temperatures", torch.tensor([1.0 / t for t in temperatures]), persistent=False)
        self.in_chans, self.num_classes = members[0].in_chans, members[0].num_classes
        self.min_input_size = members[0].min_input_size
        self.log_k = math.log(len(members))

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logs = []
        for k, member in enumerate(self.members):
            z = member(x * getattr(self, f"scale{k}") + getattr(self, f"shift{k}")).float()
            logs.append(torch.log_softmax(z * self.inv_temperatures[k], dim=1))
        return torch.logsumexp(torch.stack(logs), dim=0) - self.log_k
